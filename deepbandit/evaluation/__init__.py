"""Off-policy evaluation on arrays: estimators, baselines, segments; reports and plots (matplotlib) are
imported from their modules (``report``, ``plots``) so that estimators load without them."""

from deepbandit.evaluation.baselines import (
    LoggedRows,
    TakeRates,
    fit_take_rates,
    logged_rows,
    on_policy_value,
    time_split,
    uniform_action_dist,
    unpersonalised_action_dist,
)
from deepbandit.evaluation.checks import (
    EstimationError,
    ReplayBiasWarning,
    SupportWarning,
    deterministic_action_dist,
)
from deepbandit.evaluation.estimators import (
    DM,
    DR,
    IPS,
    MIPS,
    SNDR,
    SNIPS,
    SNMIPS,
    BalancedDR,
    BalancedIPS,
    DRos,
    Estimate,
    Lift,
    Replay,
    SwitchDR,
    embedding_groups,
    estimate_all,
    estimate_lift,
    mixture_pscore,
)
from deepbandit.evaluation.evaluate import EvaluationSettings, ModelScores, evaluate_rows, read_dataset

__all__ = [
    "DM", "DR", "DRos", "IPS", "MIPS", "SNDR", "SNIPS", "SNMIPS", "BalancedDR", "BalancedIPS", "Estimate", "Lift", "EstimationError", "EvaluationSettings", "LoggedRows",
    "ModelScores", "Replay", "ReplayBiasWarning", "SupportWarning", "SwitchDR", "TakeRates",
    "deterministic_action_dist", "embedding_groups", "estimate_all", "estimate_lift", "mixture_pscore", "evaluate_rows", "fit_take_rates", "logged_rows",
    "on_policy_value", "read_dataset", "time_split", "uniform_action_dist", "unpersonalised_action_dist",
]  # fmt: skip
