"""Vowpal Wabbit's ``cb_explore_adf`` as a closed-loop agent (the optional ``vw`` extra: ``vowpalwabbit``).

Each request becomes one multi-line ADF example: a ``shared`` line with the context and one line per
candidate image with that image's features; VW returns a probability mass function over the candidates
(epsilon-greedy or SquareCB around its cost regressor), the action is drawn here from exactly that pmf with
the loop's generator, and the pmf is logged as ``action_dist`` (``propensity_kind`` "exact"). After the
round, every request is learned from as (chosen candidate, cost = -reward, propensity): batched, delayed
feedback, like the other agents.

Namespaces (VW keys interactions on their first letter):

* ``User``: ``device=``, ``country=`` tokens (shared).
* ``Context``: ``ContextFeatures``'s dense vector (prior interaction, genre profile of the history, member
  features, ...), nonzero entries as ``c<k>:<value>`` (shared).
* ``Image``: ``i=<image_id>`` and ``t=<title_id>`` tokens (per action).
* ``Embedding``: the image embedding as ``e<k>:<value>`` (per action).

Shared features alone cannot rank the candidates of one request, so personalisation comes entirely from
the quadratic interactions (default ``UI UE CI CE``).

VW's Python API takes one example per call, so ``act`` and ``learn`` loop over the rows; the text lines are
cached per batch (``Requests.cache``) and built once per round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc

from deepbandit.loop.agents import ContextFeatures
from deepbandit.loop.environments import Environment, Requests
from deepbandit.policies import Decisions, sample_actions

PMF_TOL = 1e-4  # VW's pmf is float32: a row sum further than this from 1 is a bug, not rounding


def vw_available() -> bool:
    """True when ``vowpalwabbit`` imports (the ``vw`` extra is installed)."""
    try:
        import vowpalwabbit  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class VWConfig:
    """The ``vw`` agent (``cb_explore_adf``).

    exploration: "epsilon" (``--epsilon``: greedy w.p. 1 - epsilon, else uniform) or "squarecb"
    (``--squarecb --gamma_scale``: Foster & Rakhlin 2020, inverse-gap weighting of the predicted costs).
    interactions: pairs of namespace initials crossed with ``-q`` (U user, C context, I image, E embedding).
    extra_args: appended verbatim to the VW command line (e.g. "--cb_type dr").
    """

    exploration: str = "epsilon"
    epsilon: float = 0.05  # exploration=epsilon: probability of a uniform choice (--epsilon)
    gamma_scale: float = 10.0
    learning_rate: float = 0.5  # VW learning rate (-l)
    bits: int = 20  # bits of VW's feature hash (-b): 2^bits weights
    interactions: list[str] = field(default_factory=lambda: ["UI", "UE", "CI", "CE"])
    extra_args: str = ""  # appended verbatim to the VW command line, e.g. "--cb_type dr"

    def arguments(self, seed: int) -> str:
        if self.exploration == "epsilon":
            if not 0.0 <= self.epsilon <= 1.0:
                raise ValueError(f"vw config: epsilon must lie in [0, 1], got {self.epsilon}")
            explore = f"--epsilon {self.epsilon}"
        elif self.exploration == "squarecb":
            if self.gamma_scale <= 0:
                raise ValueError(f"vw config: gamma_scale must be > 0, got {self.gamma_scale}")
            explore = f"--squarecb --gamma_scale {self.gamma_scale}"
        else:
            raise ValueError(
                f"vw config: exploration must be 'epsilon' or 'squarecb', got {self.exploration!r}"
            )
        bad = [q for q in self.interactions if len(q) != 2 or not set(q) <= set("UCIE")]
        if bad:
            raise ValueError(f"vw config: interactions must be pairs of U, C, I, E; got {bad}")
        quadratic = " ".join(f"-q {q}" for q in self.interactions)
        return (
            f"--cb_explore_adf {explore} {quadratic} -b {self.bits} -l {self.learning_rate} "
            f"--random_seed {seed} --quiet {self.extra_args}"
        ).strip()


def _token(values: np.ndarray) -> np.ndarray:
    """Strings made safe as VW feature names (no space, '|' or ':'), injectively (percent-encoding)."""
    out = np.asarray(values, dtype=np.str_)
    for char, code in (("%", "%25"), (" ", "%20"), ("|", "%7C"), (":", "%3A")):
        out = np.char.replace(out, char, code)
    return out


class VowpalWabbitAgent:
    """``cb_explore_adf`` on (context, image) ADF examples; see the module docstring for the features."""

    name = "vw"

    def __init__(self, env: Environment, devices: list[str], cfg: VWConfig, seed: int):
        import vowpalwabbit

        self.cfg = cfg
        self.args = cfg.arguments(seed)
        self.workspace = vowpalwabbit.Workspace(self.args)
        self.context = ContextFeatures(env, devices)
        images = env.images_table()
        ids = images.column("image_id").to_numpy()
        titles = images.column("title_id").to_numpy()
        emb = images.column("embedding").combine_chunks()
        emb = pc.list_flatten(emb).to_numpy().reshape(len(ids), -1)
        # one text line per catalogue image, looked up by id: (n_ids,) object, None for ids not in it
        self.action_lines = np.full(int(ids.max()) + 1, None, dtype=object)
        self.in_catalogue = np.zeros(len(self.action_lines), bool)
        self.in_catalogue[ids] = True
        for i, t, e in zip(ids.tolist(), titles.tolist(), emb, strict=True):
            dense = " ".join(f"e{k}:{v:.6g}" for k, v in enumerate(e.tolist()) if v != 0.0)
            self.action_lines[i] = f"|Image i={i} t={t} |Embedding {dense}"

    def describe(self) -> dict:
        return {"arguments": self.args}

    def _lines(self, requests: Requests) -> tuple[list[str], np.ndarray]:
        """Shared lines (B,) and the candidates' action lines (B, A) object (None on padding)."""
        if "vw_lines" in requests.cache:
            return requests.cache["vw_lines"]
        t = requests.table
        user = np.char.add(
            np.char.add("shared |User device=", _token(t.column("device").to_numpy(zero_copy_only=False))),
            np.char.add(" country=", _token(t.column("country").to_numpy(zero_copy_only=False))),
        )
        c = self.context(requests)
        shared = [
            f"{u} |Context " + " ".join(f"c{k}:{row[k]:.6g}" for k in np.flatnonzero(row))
            for u, row in zip(user.tolist(), c, strict=True)
        ]
        ids = requests.candidates
        inside = (ids >= 0) & (ids < len(self.action_lines))
        known = inside & self.in_catalogue[np.where(inside, ids, 0)]
        unknown = requests.mask & ~known
        if unknown.any():
            b, a = np.argwhere(unknown)[0]
            raise ValueError(
                f"vw agent: request row {b} has candidate image {ids[b, a]} that is not in the environment's "
                f"images_table ({int(unknown.sum())} such candidates)"
            )
        lines = np.full(ids.shape, None, dtype=object)
        lines[requests.mask] = self.action_lines[ids[requests.mask]]
        requests.cache["vw_lines"] = (shared, lines)
        return shared, lines

    def act(self, requests: Requests, rng: np.random.Generator) -> Decisions:
        shared, lines = self._lines(requests)
        n_valid = requests.mask.sum(axis=1)
        dist = np.zeros(requests.mask.shape)
        for b, (s, n) in enumerate(zip(shared, n_valid.tolist(), strict=True)):
            pmf = self.workspace.predict([s, *lines[b, :n]])
            if len(pmf) != n:
                raise RuntimeError(f"vw agent: VW returned {len(pmf)} probabilities for {n} candidates")
            dist[b, :n] = pmf
        # candidates are left-aligned, so the pmf's positions are the row's candidate positions
        total = dist.sum(axis=1)
        off = np.abs(total - 1.0) > PMF_TOL
        if off.any() or (dist < 0).any():
            row = int(np.flatnonzero(off | (dist < 0).any(axis=1))[0])
            raise RuntimeError(f"vw agent: VW's pmf for request row {row} is not a distribution: {dist[row]}")
        dist /= total[:, None]  # float32 rounding only: the draw below uses exactly the logged dist
        action = sample_actions(dist, rng.random(len(dist)))
        return Decisions(action, dist[np.arange(len(dist)), action], dist, "exact")

    def learn(self, requests: Requests, decisions: Decisions, rewards: np.ndarray) -> None:
        shared, lines = self._lines(requests)
        n_valid = requests.mask.sum(axis=1).tolist()
        cost = (-np.asarray(rewards, dtype=np.float64)).tolist()
        for b, (s, n, a, p) in enumerate(
            zip(shared, n_valid, decisions.action.tolist(), decisions.propensity.tolist(), strict=True)
        ):
            example = [s, *lines[b, :n]]
            example[1 + a] = f"0:{cost[b]:.6g}:{p:.9g} {example[1 + a]}"  # the label marks the chosen line
            self.workspace.learn(example)
