"""Keyed uniform draws: the same (seed, member, title, time window) always gives the same number in [0, 1).

A counter-based generator (as in Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011):
instead of a stateful stream, each draw is a hash of its key, so any process on any machine computes it
without coordination and a member's draw does not depend on who else is in the batch.

The hash chains the splitmix64 finaliser (Steele, Lea & Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014; the constants of Vigna's ``splitmix64.c``) over the key:

    h = splitmix64(seed);  h = splitmix64(h ^ key)  for key in (member_id, title_id, window)
    u = (h >> 11) / 2**53                        (the top 53 bits: every double in [0, 1) a multiple of 2**-53)

in wrapping uint64 arithmetic, so it is the same on every platform numpy runs on. The hash lives in
``deepbandit.data.hashing`` (numpy only), shared with the simulator, so simulated and served sticky draws agree.
Windows are ``timestamp // window_seconds``: aligned to the Unix epoch in UTC (a 86400 s window turns over
at 00:00 UTC, not at the member's local midnight).
"""

from __future__ import annotations

import numpy as np

from deepbandit.data.hashing import hash_uniform, splitmix64  # noqa: F401  (re-exported)


def sticky_uniforms(
    seed: int, window_seconds: int, member_id: np.ndarray, title_id: np.ndarray, timestamp: np.ndarray
) -> np.ndarray:
    """(B,) uniforms keyed by (seed, member_id, title_id, timestamp // window_seconds).

    member_id, title_id (B,) int64; timestamp (B,) int64 seconds since the Unix epoch (UTC).
    """
    if window_seconds < 1:
        raise ValueError(f"window_seconds must be >= 1, got {window_seconds}")
    return hash_uniform(seed, member_id, title_id, np.floor_divide(timestamp, window_seconds))
