"""Turning scores into decisions with exact propensities: greedy, epsilon-greedy, softmax, Thompson.

numpy only (no torch): the serving layer applies these same policies to the ONNX model's outputs.
"""

from deepbandit.policies.base import Decisions, Policy, sample_actions
from deepbandit.policies.policies import (
    POLICIES,
    THOMPSON_KINDS,
    EpsilonGreedy,
    Greedy,
    Softmax,
    Thompson,
    make_policy,
    masked_argmax,
)
from deepbandit.policies.sticky import hash_uniform, splitmix64, sticky_uniforms

__all__ = [
    "POLICIES",
    "THOMPSON_KINDS",
    "Decisions",
    "EpsilonGreedy",
    "Greedy",
    "Policy",
    "Softmax",
    "Thompson",
    "hash_uniform",
    "make_policy",
    "masked_argmax",
    "sample_actions",
    "splitmix64",
    "sticky_uniforms",
]
