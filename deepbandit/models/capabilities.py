"""What an uncertainty model offers: each scorer class states it (``offers``), callers ask instead of comparing
``kind`` strings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capabilities:
    """What an uncertainty model offers its policies, its trainer and its export: callers ask this instead of
    comparing ``kind`` strings, so a new uncertainty model is its class, its entries here and its yaml.

    posterior: "none" (point scores only), "exact" (a discrete posterior drawn whole, every ensemble member
        once: Thompson propensities are exact) or "sampled" (Monte Carlo draws: estimated propensities).
    posterior_in_training: validation can report Thompson sampling from it (the neural-linear head is fitted
        after training, so its draws are not available there).
    posterior_draws: the default number of draws; None: the whole exact posterior.
    exported_posterior: the ONNX graph carries the posterior (per-member logits and winners), so export
        serves Thompson sampling from it.
    bootstrap_members: the trainer gives each member its own Poisson(1) bootstrap weights.
    posterior_noise: the exported posterior takes its randomness as a graph input, standard-normal noise
        (S, P) drawn by the host (``posterior_from_noise``), so serving draws S posterior samples with its
        own generator and logs ``mc_estimate:S`` propensities.
    conjugate_last_layer: the posterior is a Bayesian last layer on the network's features, fitted in closed
        form from logged rows (``reset_posterior()``, ``update_posterior(inputs, action, target)``) without a
        gradient step: an online learner updates it exactly after every round and refits it whenever the
        features move.
    """

    posterior: str = "none"
    posterior_in_training: bool = False
    posterior_draws: int | None = None
    exported_posterior: bool = False
    bootstrap_members: bool = False
    posterior_noise: bool = False
    conjugate_last_layer: bool = False

    @property
    def thompson_kind(self) -> str:
        """The Thompson policy's kind for these draws (``policies.Thompson``: exact or estimated propensities)."""
        return "ensemble" if self.posterior == "exact" else "mc_dropout"
