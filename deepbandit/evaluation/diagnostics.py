"""Diagnostics that speak up: how far the importance weights of one target policy let an estimate be trusted.

For the weights w_i = pi(a_i | x_i) / pscore_i of a target on the evaluated rows, :func:`weight_diagnostics`
reports the effective sample size, the rows that hold most of the weight (named by request_id), logged
propensities that look like floors rather than probabilities, and the target's unsupported mass, each
with a plain-language warning when it crosses a threshold of :class:`DiagnosticThresholds`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from deepbandit.errors import ConfigError


@dataclass  # not frozen: it is also a node of the commands' typed configs, which OmegaConf fills in
class DiagnosticThresholds:
    min_ess_fraction: float = 0.01  # warn below this effective sample size / rows
    max_top_weight_share: float = 0.25  # warn when the heaviest top_rows rows hold more of the total weight
    top_rows: int = 10  # heaviest rows named in the report
    floor_factor: float = 1e-3  # a propensity below this x uniform (1 / candidates) looks like a floor
    max_unsupported_mass: float = 1e-3  # warn above this mean target mass on never-shown candidates

    def __post_init__(self) -> None:
        for name in ("min_ess_fraction", "max_top_weight_share", "floor_factor", "max_unsupported_mass"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"diagnostics.{name} must be in [0, 1], got {value}")
        if self.top_rows < 1:
            raise ConfigError(f"diagnostics.top_rows must be >= 1, got {self.top_rows}")


def weight_diagnostics(
    pscore: np.ndarray,
    pi_logged: np.ndarray,
    n_candidates: np.ndarray,
    request_id: np.ndarray,
    unsupported_mass: float,
    thresholds: DiagnosticThresholds,
) -> dict:
    """pscore, pi_logged (target probability of the logged image), n_candidates (n,); request_id (n,) str;
    unsupported_mass from the estimators' diagnostics. Returns a JSON-ready dict with ``warnings``."""
    t = thresholds
    w = pi_logged / pscore
    n, total = len(w), float(w.sum())
    ess = total**2 / float((w * w).sum()) if total > 0 else 0.0
    order = np.argsort(-w, kind="stable")[: t.top_rows]
    top_share = float(w[order].sum() / total) if total > 0 else 0.0
    heaviest = [
        {
            "request_id": str(request_id[i]),
            "weight": float(w[i]),
            "share": float(w[i] / total),
            "pscore": float(pscore[i]),
        }
        for i in order
        if total > 0 and w[i] > 0
    ]
    # only rows this policy puts weight on: a floor the target never picks costs it nothing
    floor = (pscore < t.floor_factor / n_candidates) & (w > 0)
    floor_values, floor_counts = np.unique(pscore[floor], return_counts=True)
    floor_weight = float(w[floor].sum() / total) if total > 0 else 0.0
    warnings = []
    if ess < t.min_ess_fraction * n:
        warnings.append(
            f"effective sample size {ess:.1f} of {n:,} rows ({ess / n:.2%}): below {t.min_ess_fraction:.0%}, "
            "the estimate rests on a handful of rows and its interval is not to be trusted"
        )
    if heaviest and top_share > t.max_top_weight_share:
        names = ", ".join(f"{h['request_id']} ({h['share']:.0%})" for h in heaviest[:3])
        warnings.append(
            f"the {len(heaviest)} heaviest rows hold {top_share:.0%} of all weight (heaviest: {names})"
        )
    if floor.any():
        shown = ", ".join(f"{v:.3g} x{c}" for v, c in zip(floor_values[:3], floor_counts[:3], strict=True))
        warnings.append(
            f"{int(floor.sum())} rows log a propensity below {t.floor_factor:g} x uniform ({shown}): these look "
            f"like floors (a zero count or clipping), not probabilities; they hold {floor_weight:.0%} of this "
            "policy's weight"
        )
    if unsupported_mass > t.max_unsupported_mass:
        warnings.append(
            f"the policy puts {unsupported_mass:.2%} of its mass (mean per row) on candidates the logging "
            "policy never shows: weighted estimators cannot see that part of its value"
        )
    return {
        "n_rows": n,
        "ess": ess,
        "ess_fraction": ess / n if n else 0.0,
        "top_weight_share": top_share,
        "heaviest_rows": heaviest,
        "floor_propensity_rows": int(floor.sum()),
        "floor_propensity_weight_share": floor_weight,
        "unsupported_mass": unsupported_mass,
        "thresholds": asdict(t),
        "warnings": warnings,
    }
