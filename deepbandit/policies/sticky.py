"""Keyed uniform draws: the same (seed, member, title, time window) always gives the same number in [0, 1).

A counter-based generator (as in Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011):
instead of a stateful stream, each draw is a hash of its key, so any process on any machine computes it
without coordination and a member's draw does not depend on who else is in the batch.

The hash chains the splitmix64 finaliser (Steele, Lea & Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014; the constants of Vigna's ``splitmix64.c``) over the key:

    h = splitmix64(seed);  h = splitmix64(h ^ key)  for key in (member_id, title_id, window)
    u = (h >> 11) / 2**53                        (the top 53 bits: every double in [0, 1) a multiple of 2**-53)

in wrapping uint64 arithmetic, so it is the same on every platform numpy runs on. This is the construction
of ``deepbandit.data.logging_policies.hash_uniform`` too, so simulated and served sticky draws agree.
Windows are ``timestamp // window_seconds``: aligned to the Unix epoch in UTC (a 86400 s window turns over
at 00:00 UTC, not at the member's local midnight).
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """One splitmix64 step on a uint64 array (any shape): add the golden gamma, then the finaliser."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def hash_uniform(seed: int, *keys: np.ndarray) -> np.ndarray:
    """(B,) float64 in [0, 1): a deterministic function of ``seed`` (0 <= seed < 2**64) and the int64 keys (B,)."""
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    if not keys:
        raise ValueError("hash_uniform needs at least one key array")
    h = splitmix64(np.full(len(keys[0]), seed, dtype=np.uint64))
    for key in keys:
        # int64 -> uint64 reinterprets the bits (two's complement), so negative ids hash fine
        h = splitmix64(h ^ np.ascontiguousarray(key, dtype=np.int64).view(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def sticky_uniforms(
    seed: int, window_seconds: int, member_id: np.ndarray, title_id: np.ndarray, timestamp: np.ndarray
) -> np.ndarray:
    """(B,) uniforms keyed by (seed, member_id, title_id, timestamp // window_seconds).

    member_id, title_id (B,) int64; timestamp (B,) int64 seconds since the Unix epoch (UTC).
    """
    if window_seconds < 1:
        raise ValueError(f"window_seconds must be >= 1, got {window_seconds}")
    return hash_uniform(seed, member_id, title_id, np.floor_divide(timestamp, window_seconds))
