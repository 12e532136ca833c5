"""``PolicyConfig``: the one way to name a policy and its fields, in training, export and the closed loop.

``conf/policy/*.yaml`` fill it; ``deepbandit train`` reports the policy's off-policy value beside greedy,
``deepbandit export`` serves it (the training run's, unless another is chosen) and the loop's deep agent
``deep_<name>`` decides with it. ``spec`` turns it into the ``make_policy`` keyword form the export
manifest stores, keeping only the fields that policy reads, so the manifest holds no field the policy would
refuse or ignore.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deepbandit.errors import ConfigError
from deepbandit.policies.base import Policy
from deepbandit.policies.policies import POLICIES, make_policy

# fields each policy reads besides the ones every policy has (min_propensity, sticky_window_seconds, seed)
POLICY_FIELDS: dict[str, tuple[str, ...]] = {
    "greedy": (),
    "epsilon_greedy": ("epsilon",),
    "softmax": ("temperature",),
    "thompson": ("epsilon",),
}
COMMON_FIELDS = ("min_propensity", "sticky_window_seconds", "seed")


@dataclass
class PolicyConfig:
    """How scores become decisions (``deepbandit.policies``); thompson samples the model's posterior."""

    name: str = "epsilon_greedy"  # epsilon_greedy | softmax | greedy | thompson
    epsilon: float = 0.1  # probability spread uniformly over the candidates (epsilon_greedy, thompson)
    temperature: float = 1.0  # softmax: probabilities proportional to exp(logit / temperature); > 0
    # thompson: posterior draws per request; null: all members (mc_dropout: uncertainty.n_samples)
    n_samples: int | None = None
    min_propensity: float = 0.0  # floor on every candidate's probability; 0 = none
    # serving: > 0 keeps a member's image of a title for this many seconds (same distribution); 0 = fresh draws
    sticky_window_seconds: int = 0
    seed: int = 0  # seed of the sticky hash

    def spec(self, thompson_kind: str | None = None) -> dict[str, Any]:
        """``{"name", **fields}`` for ``make_policy``: the fields this policy reads, non-default common
        fields, and for thompson the posterior ``thompson_kind`` (the model's, ``Capabilities``)."""
        if self.name not in POLICY_FIELDS:
            raise ConfigError(f"policy.name must be one of {', '.join(POLICY_FIELDS)}; got {self.name!r}")
        spec: dict[str, Any] = {"name": self.name, **{f: getattr(self, f) for f in POLICY_FIELDS[self.name]}}
        defaults = PolicyConfig()
        spec |= {f: getattr(self, f) for f in COMMON_FIELDS if getattr(self, f) != getattr(defaults, f)}
        if self.name == "thompson":
            if thompson_kind is None:
                raise ConfigError("policy=thompson needs a model with a posterior (uncertainty=ensemble)")
            spec["kind"] = thompson_kind
        return spec

    def build(self, thompson_kind: str | None = None) -> Policy:
        spec = self.spec(thompson_kind)
        return make_policy(spec.pop("name"), **spec)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> PolicyConfig:
        """The config of a stored spec or a bundle's ``meta["policy"]``; ``kind`` (Thompson's posterior) is
        the model's and is dropped, null fields keep their defaults, any other key is refused."""
        known = {"name", "n_samples", *COMMON_FIELDS, *{f for fs in POLICY_FIELDS.values() for f in fs}}
        unknown = sorted(set(spec) - known - {"kind"})
        if unknown:
            raise ConfigError(f"policy spec {spec}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in spec.items() if k in known and v is not None})


assert set(POLICY_FIELDS) == set(POLICIES), "every policy states the fields it reads"
