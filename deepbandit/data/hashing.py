"""Counter-based keyed hashing, numpy only: the same keys give the same uniform on every machine.

splitmix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014; the
constants of Vigna's ``splitmix64.c``) chained over the keys:

    h = splitmix64(seed);  h = splitmix64(h ^ key)  for each key
    u = (h >> 11) / 2**53                        (the top 53 bits)

in wrapping uint64 arithmetic. The simulator's sticky logging policies, the served sticky policies
(``deepbandit.policies.sticky``) and the closed loop's common random rewards all draw from this one hash,
so simulated and served sticky draws agree by construction.
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
