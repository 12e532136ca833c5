"""Deployment gate: ship a candidate policy only when the logs say, with confidence, that it beats the
incumbent and the weights behind that claim are sound.

    result = run_gate(table, candidate, settings, incumbent=None)   # incumbent None: the logging policy
    result["passed"], result["checks"]

The lift (candidate value - incumbent value) is estimated with one estimator on the same rows and the same
bootstrap resamples for both policies (paired, ``estimators.estimate_lift``), so the noise they share
cancels. The gate passes when every check passes:

* **lift**: the one-sided ``1 - alpha`` lower confidence bound of the lift is above ``min_lift``;
* **diagnostics** of the candidate (and of an incumbent that is not the logging policy): effective sample
  size, weight held by the heaviest rows, propensities that look like floors, unsupported mass
  (``diagnostics.weight_diagnostics`` and its thresholds);
* **estimate**: the estimator could be computed at all (rows match, resamples carry weight).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from deepbandit.errors import ConfigError
from deepbandit.evaluation.checks import EstimationError
from deepbandit.evaluation.diagnostics import DiagnosticThresholds, weight_diagnostics
from deepbandit.evaluation.estimators import INTERVAL_METHODS, estimate_lift
from deepbandit.evaluation.evaluate import (
    ESTIMATORS,
    iso_time,
    known_rows,
    make_estimators,
)
from deepbandit.evaluation.reward_models import check_reward_model, out_of_sample_rewards
from deepbandit.evaluation.targets import TargetPolicy

# Unbiased or consistent estimators only: the interval of a biased one (DM, Switch-DR, DRos, MIPS when groups
# mix images of different appeal) is centred off the truth, so its lower bound is no confidence bound.
# Measured on the simulator (tests/evaluation/test_known_truth.py): DRos's 95% intervals covered 33% of the time.
GATE_ESTIMATORS = ("ips", "snips", "dr", "sndr")


@dataclass
class GateSettings:
    estimator: str = "snips"  # the estimator of both values and of the lift
    min_lift: float = 0.0  # the lift's lower bound must be above this (reward per impression)
    alpha: float = 0.05  # one-sided: the lower bound holds with probability 1 - alpha
    interval: str = "bootstrap"  # bootstrap | normal
    n_bootstrap: int = 1000
    seed: int = 0
    reward_model: str = "logistic"  # for dr, sndr: logistic | take_rates
    reward_model_folds: int = 5
    estimator_params: dict = field(default_factory=dict)
    diagnostics: DiagnosticThresholds = field(default_factory=DiagnosticThresholds)
    window_start: str | None = None
    window_end: str | None = None

    def check(self) -> None:
        if self.estimator not in GATE_ESTIMATORS:
            raise ConfigError(
                f"estimator must be one of {', '.join(GATE_ESTIMATORS)} (unbiased or consistent: a biased "
                f"estimator's lower bound is no confidence bound); got {self.estimator!r}"
            )
        if self.interval not in INTERVAL_METHODS:
            raise ConfigError(f"interval must be one of {', '.join(INTERVAL_METHODS)}; got {self.interval!r}")
        if not 0 < self.alpha < 0.5:
            raise ConfigError(f"alpha must be in (0, 0.5) (a one-sided bound); got {self.alpha}")
        if self.interval == "bernstein" and not ESTIMATORS[self.estimator].is_mean:
            raise ConfigError(
                f"interval=bernstein bounds means of per-row terms; {self.estimator} is a ratio (use ips or dr, "
                "or interval=bootstrap)"
            )
        if self.reward_model not in ("logistic", "take_rates"):
            raise ConfigError(f"reward_model must be logistic or take_rates; got {self.reward_model!r}")


def run_gate(
    table: pa.Table,
    candidate: TargetPolicy,
    settings: GateSettings,
    *,
    incumbent: TargetPolicy | None = None,
    titles: pa.Table | None = None,
    images: pa.Table | None = None,
    source: str = "impressions",
) -> dict:
    """Gate ``candidate`` against ``incumbent`` (None: the logging policy) on every row of the window; returns
    a JSON-ready dict with ``passed`` and the ``checks`` (each with passed and a plain-language detail)."""
    started = time.perf_counter()
    settings.check()
    table, rows, n_open = known_rows(table, settings, source, 2)
    n = len(rows)
    request_id = table.column("request_id").to_numpy(zero_copy_only=False).astype(str)
    # make_estimators adds the defaults of ESTIMATOR_PARAMS under the settings' parameters
    estimator = make_estimators([settings.estimator], settings.estimator_params)[0]
    q_hat, reward_model = None, None
    if ESTIMATORS[settings.estimator].needs_reward_model:
        kind = check_reward_model(settings.reward_model, False)
        q_hat, reward_model = out_of_sample_rewards(
            kind, rows, table, titles, images, None, settings.reward_model_folds, settings.seed
        )
    cand = candidate(table, rows.candidate_mask)
    inc = incumbent(table, rows.candidate_mask) if incumbent is not None else None
    checks: list[dict] = []
    lift = None
    try:
        lift = estimate_lift(
            estimator,
            candidate_dist=cand.action_dist,
            incumbent_dist=None if inc is None else inc.action_dist,
            reward=rows.reward,
            action=rows.action,
            pscore=rows.pscore,
            candidate_mask=rows.candidate_mask,
            estimated_rewards=q_hat,
            logging_action_dist=rows.logging_action_dist,
            interval=settings.interval,
            alpha=settings.alpha,
            n_bootstrap=settings.n_bootstrap,
            seed=settings.seed,
            one_sided=True,
        )
    except EstimationError as err:
        checks.append({"check": "estimate", "passed": False, "detail": str(err)})
    if lift is not None:
        passed = lift.lower > settings.min_lift
        checks.append({
            "check": "lift",
            "passed": bool(passed),
            "detail": f"lift {lift.lift:+.4g} ({estimator.name}: candidate {lift.candidate_value:.4g}, incumbent "
            f"{lift.incumbent_value:.4g}); its {1 - settings.alpha:.0%} lower bound {lift.lower:+.4g} is "
            + ("above" if passed else "not above") + f" the required {settings.min_lift:+.4g}",
        })  # fmt: skip
    diagnostics = {}
    for who, out in (("candidate", cand), ("incumbent", inc)):
        if out is None:
            continue
        estimate = None if lift is None else getattr(lift, who)
        unsupported = 0.0 if estimate is None else estimate.diagnostics.unsupported_mass
        diag = weight_diagnostics(
            rows.pscore, out.action_dist[np.arange(n), rows.action], rows.candidate_mask.sum(axis=1),
            request_id, unsupported, settings.diagnostics,
        )  # fmt: skip
        diagnostics[who] = diag
        checks.append({
            "check": f"{who} diagnostics",
            "passed": not diag["warnings"],
            "detail": "; ".join(diag["warnings"]) or f"sound (ESS {diag['ess']:.0f} of {n:,} rows, heaviest "
            f"{diag['thresholds']['top_rows']} rows hold {diag['top_weight_share']:.1%} of the weight, no floor "
            "propensities, full support)",
        })  # fmt: skip
    return {
        "passed": all(c["passed"] for c in checks),
        "checks": checks,
        "candidate": candidate.source,
        "incumbent": "the logging policy (its on-policy mean reward)"
        if incumbent is None
        else incumbent.source,
        "estimator": estimator.name,
        "lift": None if lift is None else lift_dict(lift),
        "min_lift": settings.min_lift,
        "alpha": settings.alpha,
        "interval": settings.interval,
        "reward_model": reward_model,
        "diagnostics": diagnostics,
        "n_rows": n,
        "dropped_open_reward_rows": n_open,
        "window": {
            "first": iso_time(rows.timestamp.min()),
            "last": iso_time(rows.timestamp.max()),
            "start": settings.window_start,
            "end": settings.window_end,
        },  # fmt: skip
        "run": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": time.perf_counter() - started,
        },
    }


def lift_dict(lift) -> dict:
    return {
        "lift": lift.lift,
        "lower": lift.lower,
        "candidate_value": lift.candidate_value,
        "incumbent_value": lift.incumbent_value,
        "method": lift.method,
    }


def gate_markdown(result: dict) -> str:
    """gate.md: the verdict first, then each check's reason."""
    verdict = "PASS" if result["passed"] else "FAIL"
    out = [
        f"# Deployment gate: {verdict}",
        "",
        f"- **candidate**: {result['candidate']}",
        f"- **incumbent**: {result['incumbent']}",
        f"- **data**: {result['n_rows']:,} rows logged from {result['window']['first']} to {result['window']['last']}",
        f"- **estimator**: {result['estimator']}, one-sided {1 - result['alpha']:.0%} {result['interval']} lower "
        f"bound; required lift above {result['min_lift']:+.4g}",
        f"- **run**: {result['run']['date']}, {result['run']['seconds']:.1f} s",
        "",
        "| check | result | why |",
        "|---|---|---|",
    ]
    out += [
        f"| {c['check']} | {'pass' if c['passed'] else 'FAIL'} | {c['detail']} |" for c in result["checks"]
    ]
    return "\n".join(out) + "\n"
