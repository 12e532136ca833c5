"""Display names and order of the policies in reports, plots and console tables (no matplotlib here, so that
evaluation's warnings and the console table can use them without loading it)."""

from __future__ import annotations

ORDER = ("random", "logging", "unpersonalised", "model", "best_image", "oracle")
LABELS = {
    "random": "uniform random",
    "logging": "logging policy (on-policy)",
    "unpersonalised": "unpersonalised bandit",
    "model": "model policy",
    "best_image": "best single image (true value only)",
    "oracle": "oracle (true value only)",
}


def label(name: str) -> str:
    """The display name of a policy (a user's target policy keeps its own name)."""
    return LABELS.get(name, name)


def policy_order(policies: dict) -> list[str]:
    """Built-in policies in their fixed order, then the user's target policies in the order given."""
    return [n for n in ORDER if n in policies] + [n for n in policies if n not in ORDER]
