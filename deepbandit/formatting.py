"""Printing policy values at the scale they live on: a click rate of 0.0018 and a play rate of 0.31 both
keep their significant digits (four fixed decimals would print the first as 0.0018 and its gain as 0.0000)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def decimals_for(values: Iterable[float | None], significant: int = 4) -> int:
    """Decimals that show ``significant`` digits of the largest finite non-zero magnitude (1..10)."""
    magnitudes = [abs(v) for v in values if v is not None and math.isfinite(v) and v != 0]
    if not magnitudes:
        return significant
    return min(10, max(1, significant - 1 - math.floor(math.log10(max(magnitudes)))))


def fmt(x: float | None, decimals: int) -> str:
    """``x`` with ``decimals`` decimals; a dash for a missing or NaN value."""
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{decimals}f}"
