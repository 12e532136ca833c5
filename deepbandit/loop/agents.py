"""Agents of the closed loop: each decides a batch of requests and learns from its own logged outcomes.

An agent has ``name``, ``act(requests, rng) -> Decisions`` (``deepbandit.policies.Decisions``: action
(B,), propensity (B,), action_dist (B, A), propensity_kind) and ``learn(requests, decisions, rewards)``,
called once per round with the round's rewards (B,) (batched, delayed feedback, as in production).

* ``RandomAgent``: uniform over the candidates.
* ``UnpersonalisedThompson``: Beta-Bernoulli Thompson sampling per image (images belong to one title, so
  per (title, image)); the same posterior for every member.
* ``LinUCB``: shared-parameter LinUCB (Li et al. 2010) on phi(x, a) = context vector (x) image embedding.
* ``DeepAgent``: our network (``deepbandit.models``), retrained warm-started on everything it logged,
  exported to ONNX and served by ``deepbandit.serving.ArtworkService`` with a greedy, epsilon-greedy or
  ensemble-Thompson policy.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from deepbandit.data.tensors import ImageTable
from deepbandit.data.vocab import FeatureVocabs
from deepbandit.errors import ConfigError
from deepbandit.loop.environments import Environment, Requests
from deepbandit.losses.objectives import ObjectiveConfig, compute_loss
from deepbandit.losses.weights import poisson_bootstrap_weights
from deepbandit.models.bundle import ModelBundle
from deepbandit.models.encoders import ModelConfig
from deepbandit.models.uncertainty import UncertaintyConfig, build_scorer
from deepbandit.policies import Decisions, EpsilonGreedy, Greedy, Policy, Thompson


class Agent(Protocol):
    name: str

    def act(self, requests: Requests, rng: np.random.Generator) -> Decisions: ...

    def learn(self, requests: Requests, decisions: Decisions, rewards: np.ndarray) -> None: ...


def uniform_decisions(mask: np.ndarray, rng: np.random.Generator) -> Decisions:
    """Uniform over each row's valid candidates (mask (B, A)), exact propensities."""
    return EpsilonGreedy(1.0).decide(np.zeros(mask.shape), mask, rng=rng)


class RandomAgent:
    name = "random"

    def act(self, requests: Requests, rng: np.random.Generator) -> Decisions:
        return uniform_decisions(requests.mask, rng)

    def learn(self, requests: Requests, decisions: Decisions, rewards: np.ndarray) -> None:
        pass


class UnpersonalisedThompson:
    """Beta(1, 1)-Bernoulli Thompson sampling per image id, ignoring who asks.

    The chance that an image's posterior draw is the largest has no closed form, so ``n_samples`` S
    draws per request estimate it; the action is drawn from exactly that share (``Thompson`` on the
    (B, S, A) draws), logged as ``mc_estimate:S``: exact given the draws, which are independent of the
    rewards (the same argument as for MC dropout in docs/policies.md).
    """

    name = "unpersonalised_ts"

    def __init__(self, n_images: int, n_samples: int = 32, min_propensity: float = 0.0):
        self.alpha = np.ones(n_images)
        self.beta = np.ones(n_images)
        self.n_samples = n_samples
        self.policy = Thompson("mc_dropout", min_propensity=min_propensity)  # kind only sets the label

    def act(self, requests: Requests, rng: np.random.Generator) -> Decisions:
        ids = np.maximum(requests.candidates, 0)
        shape = (len(requests), self.n_samples, ids.shape[1])
        draws = rng.beta(
            np.broadcast_to(self.alpha[ids][:, None], shape), np.broadcast_to(self.beta[ids][:, None], shape)
        )
        return self.policy.decide(draws, requests.mask, rng=rng)

    def learn(self, requests: Requests, decisions: Decisions, rewards: np.ndarray) -> None:
        image = requests.candidates[np.arange(len(requests)), decisions.action]
        self.alpha += np.bincount(image, weights=rewards, minlength=len(self.alpha))
        self.beta += np.bincount(image, weights=1.0 - rewards, minlength=len(self.beta))


class ContextFeatures:
    """A small dense context vector per request for the linear baselines, (B, P) float64:
    [1, device one-hot, prior_interaction, mean genre multi-hot of the played titles, member_features]."""

    def __init__(self, env: Environment, devices: list[str]):
        titles = env.titles_table()
        genres = titles.column("genres").combine_chunks()
        names = sorted(set(pc.list_flatten(genres).to_pylist()))
        n_titles = int(pc.max(titles.column("title_id")).as_py()) + 1
        g = np.zeros((n_titles, len(names)))
        rows = np.repeat(titles.column("title_id").to_numpy(), pc.list_value_length(genres).to_numpy())
        g[rows, np.searchsorted(names, pc.list_flatten(genres).to_numpy(zero_copy_only=False))] = 1.0
        self.title_genres = g / np.maximum(g.sum(axis=1, keepdims=True), 1.0)
        self.devices = np.asarray(sorted(devices))
        self.member_features_dim = env.member_features_dim

    def __call__(self, requests: Requests) -> np.ndarray:
        if "context_features" in requests.cache:
            return requests.cache["context_features"]
        t = requests.table
        b = len(requests)
        device = t.column("device").combine_chunks().to_numpy(zero_copy_only=False).astype(np.str_)
        one_hot = (device[:, None] == self.devices[None, :]).astype(np.float64)
        played = t.column("played_title_ids").combine_chunks()
        n_played = pc.list_value_length(played).to_numpy()
        flat = pc.list_flatten(played).to_numpy()
        row = np.repeat(np.arange(b), n_played)
        hist = np.zeros((b, self.title_genres.shape[1]))
        np.add.at(hist, row, self.title_genres[flat])
        hist /= np.maximum(n_played, 1)[:, None]
        parts = [np.ones((b, 1)), one_hot, t.column("prior_interaction").to_numpy()[:, None] * 1.0, hist]
        if self.member_features_dim:
            mf = t.column("member_features").combine_chunks()
            parts.append(pc.list_flatten(mf).to_numpy().reshape(b, self.member_features_dim))
        out = np.concatenate(parts, axis=1)
        requests.cache["context_features"] = out
        return out


class LinUCB:
    """Shared-parameter LinUCB on phi(x, a) = c(x) (x) e_a (outer product of the context vector and the
    image embedding, P * D features): ridge regression A = lambda I + sum phi phi^T, b = sum r phi, score
    theta^T phi + alpha sqrt(phi^T A^-1 phi). Deterministic (argmax, propensity 1), updated once a round."""

    name = "linucb"

    def __init__(self, env: Environment, devices: list[str], alpha: float = 1.0, ridge: float = 1.0):
        images = env.images_table()
        emb = images.column("embedding").combine_chunks()
        d = len(emb[0])
        self.embedding = np.zeros((int(pc.max(images.column("image_id")).as_py()) + 1, d))
        self.embedding[images.column("image_id").to_numpy()] = pc.list_flatten(emb).to_numpy().reshape(-1, d)
        self.context = ContextFeatures(env, devices)
        self.alpha = alpha
        p = self.context.title_genres.shape[1] + len(self.context.devices) + 2 + env.member_features_dim
        self.gram = ridge * np.eye(p * d)
        self.b = np.zeros(p * d)
        self.inverse = np.linalg.inv(self.gram)
        self.theta = np.zeros(p * d)

    def _phi(self, requests: Requests) -> np.ndarray:
        """(B, A, P * D) features."""
        c = self.context(requests)
        e = self.embedding[np.maximum(requests.candidates, 0)]
        return (c[:, None, :, None] * e[:, :, None, :]).reshape(*e.shape[:2], -1)

    def act(self, requests: Requests, rng: np.random.Generator) -> Decisions:
        phi = self._phi(requests)
        width = np.sqrt(np.maximum(np.einsum("bai,ij,baj->ba", phi, self.inverse, phi), 0.0))
        return Greedy().decide(phi @ self.theta + self.alpha * width, requests.mask, rng=rng)

    def learn(self, requests: Requests, decisions: Decisions, rewards: np.ndarray) -> None:
        phi = self._phi(requests)[np.arange(len(requests)), decisions.action]
        self.gram += phi.T @ phi
        self.b += phi.T @ rewards
        self.inverse = np.linalg.inv(self.gram)
        self.theta = self.inverse @ self.b


@dataclass
class DeepConfig:
    """The deep agents' network, retraining and serving.

    serve: "onnx" (export after every retrain and decide through ``ArtworkService``: the real hand-off)
    or "torch" (decide with the torch model on the same features; faster, for tests and sweeps).
    warmup_rounds: rounds served uniformly at random before the first model (exact propensities).
    retrain_every: rounds between retrains; each retrain runs ``epochs`` passes over everything the agent
    logged so far, continuing from the previous weights and optimiser state (warm start).
    importance_weight_reward: weight the cross-entropy by 1/propensity (clipped at ``clip``); off by
    default: the network regresses the reward of the shown image, which needs no reweighting when the
    model can represent the truth, and the on-policy logs' tiny propensities would only add variance.
    """

    id_dim: int = 16  # width of the learned embeddings: titles, countries, languages, devices, genres
    tower_dim: int = 32  # width d of the member and image representations
    hidden_dim: int = 64  # width of the hidden layer of each tower
    head_dim: int = 64  # width of the interaction head's last hidden layer
    n_members: int = 5  # ensemble size of deep_thompson (greedy / epsilon use one network)
    prior_scale: float = 0.0  # deep_thompson: scale of the randomised prior networks; 0 = none
    bootstrap: bool = True  # deep_thompson: train each member on its own Poisson(1) bootstrap
    lr: float = 3e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam weight decay (L2 penalty, not decoupled)
    epochs: int = 2  # passes over everything the agent logged, per retrain
    batch_size: int = 512  # impressions per Adam step
    importance_weight_reward: bool = False  # weight the cross-entropy by 1/propensity, clipped at clip
    clip: float = 20.0  # cap of the importance weights (>= 1); read only with importance_weight_reward
    epsilon: float = 0.1  # deep_epsilon: probability spread uniformly over the candidates
    min_propensity: float = 0.0  # floor on every candidate's probability, all deep agents; 0 = none
    warmup_rounds: int = 1  # rounds served uniformly at random before the first model
    retrain_every: int = 1  # rounds between retrains (warm start, on everything logged so far)
    serve: str = "onnx"
    # torch threads while training: these small networks train several times faster on one thread than
    # on oversubscribed cores (0: leave torch's setting)
    threads: int = 1


def title_genre_matrix(titles: pa.Table, vocabs: FeatureVocabs) -> torch.Tensor:
    """(n_titles + 2, G) float32 multi-hot genres aligned with the title vocab, rows normalised to sum 1."""
    genres = titles.column("genres").combine_chunks()
    n = pc.list_value_length(genres).to_numpy()
    rows = np.repeat(vocabs.title.lookup(titles.column("title_id")), n)
    cols = vocabs.genre.lookup(pc.list_flatten(genres)) - 2
    g = np.zeros((len(vocabs.title), len(vocabs.genre) - 2), np.float32)
    g[rows, cols] = 1.0
    return torch.from_numpy(g / np.maximum(g.sum(axis=1, keepdims=True), 1.0))


class Featurizer:
    """Request table -> model inputs, once per round for every deep agent: the serving feature code
    (``deepbandit.serving.features``) on vocabularies fitted on the catalogue and the first requests, so
    the torch path, training and the ONNX service see identical inputs."""

    def __init__(self, env: Environment, first: Requests, max_history: int = 32):
        from deepbandit.serving.features import ImageIndex, NumpyVocab

        images = env.images_table()
        self.vocabs = FeatureVocabs.build(first.table, images=images, titles=env.titles_table())
        self.image_embedding = ImageTable.from_table(images, self.vocabs.image).embedding
        self.title_genres = title_genre_matrix(env.titles_table(), self.vocabs)
        self.numpy_vocabs = {n: NumpyVocab(v) for n, v in self.vocabs.to_dict().items()}
        self.image_index = ImageIndex(self.numpy_vocabs["image"])
        self.member_features_dim = env.member_features_dim
        self.max_history = max_history

    def model_config(self, cfg: DeepConfig) -> ModelConfig:
        v = self.vocabs
        return ModelConfig(
            n_titles=len(v.title) - 2,
            n_countries=len(v.country) - 2,
            n_languages=len(v.language) - 2,
            n_devices=len(v.device) - 2,
            n_images=len(v.image) - 2,
            n_genres=self.title_genres.shape[1],
            embedding_dim=self.image_embedding.shape[1],
            member_features_dim=self.member_features_dim,
            id_dim=cfg.id_dim,
            tower_dim=cfg.tower_dim,
            hidden_dim=cfg.hidden_dim,
            head_dim=cfg.head_dim,
        )

    def __call__(self, requests: Requests, input_names: list[str]) -> dict[str, np.ndarray]:
        if "feeds" not in requests.cache:
            from deepbandit.serving.features import build_inputs, from_arrow

            batch = from_arrow(requests.table, self.member_features_dim)
            graph = build_inputs(
                batch,
                self.numpy_vocabs,
                self.image_index,
                self.image_embedding.numpy(),
                input_names,
                self.max_history,
            )
            if batch.errors:
                row, message = next(iter(batch.errors.items()))
                raise ValueError(f"requests row {row}: {message}")
            requests.cache["feeds"] = graph.feeds
        return requests.cache["feeds"]


@contextmanager
def _threads(n: int):
    """torch intra-op threads set to ``n`` inside the block (0: unchanged)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pad_concat(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate along axis 0, zero-padding axis 1 (candidates / history) to the widest."""
    if arrays[0].ndim == 1:
        return np.concatenate(arrays)
    width = max(a.shape[1] for a in arrays)
    padded = [np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2)) for a in arrays]
    return np.concatenate(padded)


@dataclass
class _Log:
    """What a deep agent logged: per round the model inputs and (action, propensity, reward, row_key)."""

    feeds: list[dict[str, np.ndarray]] = field(default_factory=list)
    outcome: list[tuple[np.ndarray, ...]] = field(default_factory=list)


class DeepAgent:
    """Our network as a bandit: ``kind`` "greedy", "epsilon" (epsilon-greedy) or "thompson" (bootstrapped
    ensemble with ``n_members`` networks, exact propensities from the per-member winners)."""

    def __init__(self, kind: str, featurizer: Featurizer, cfg: DeepConfig, seed: int, work_dir: Path | None):
        policies: dict[str, Policy] = {
            "greedy": Greedy(min_propensity=cfg.min_propensity),
            "epsilon": EpsilonGreedy(cfg.epsilon, min_propensity=cfg.min_propensity),
            "thompson": Thompson("ensemble", min_propensity=cfg.min_propensity),
        }
        if kind not in policies:
            raise ConfigError(f"DeepAgent: kind must be one of {sorted(policies)}, got {kind!r}")
        if cfg.serve not in ("onnx", "torch"):
            raise ConfigError(f"DeepAgent: serve must be 'onnx' or 'torch', got {cfg.serve!r}")
        self.name, self.kind, self.cfg, self.policy = f"deep_{kind}", kind, cfg, policies[kind]
        self.featurizer = featurizer
        self.model_cfg = featurizer.model_config(cfg)
        self.unc_cfg = UncertaintyConfig(
            kind="ensemble" if kind == "thompson" else "none",
            n_members=cfg.n_members,
            prior_scale=cfg.prior_scale,
            bootstrap=cfg.bootstrap,
            bootstrap_seed=seed,
        )
        torch.manual_seed(seed)
        self.model = build_scorer(self.model_cfg, self.unc_cfg, featurizer.title_genres)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.objective = ObjectiveConfig(
            name="reward",
            clip=cfg.clip if cfg.importance_weight_reward else None,
            importance_weight_reward=cfg.importance_weight_reward,
        )
        from deepbandit.export.graph import input_names

        self.input_names = input_names(self._bundle())
        self.seed, self.rounds, self.trained = seed, 0, False
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="loop-"))
        self.service = None
        self.log = _Log()
        self.train_seconds = 0.0
        self.export_seconds = 0.0

    def _bundle(self) -> ModelBundle:
        return ModelBundle.from_model(
            self.model,
            self.model_cfg,
            self.unc_cfg,
            self.featurizer.vocabs,
            self.featurizer.image_embedding,
            self.featurizer.title_genres,
            meta={"source": "deepbandit loop", "agent": self.name},
        )

    def act(self, requests: Requests, rng: np.random.Generator) -> Decisions:
        feeds = self.featurizer(requests, self.input_names)  # also kept for retraining
        if not self.trained:
            return uniform_decisions(requests.mask, rng)
        if self.service is not None:
            out = self.service.decide(requests.table, rng=rng)
            if out.errors:
                row, message = next(iter(out.errors.items()))
                raise RuntimeError(f"{self.name}: the service refused request {row}: {message}")
            return Decisions(out.action, out.propensity, out.action_dist, out.propensity_kind)
        with torch.no_grad(), _threads(self.cfg.threads):
            x = {k: torch.from_numpy(v) for k, v in feeds.items()}
            if self.kind == "thompson":
                scores = self.model.posterior_samples(None, **x).numpy()  # (B, K, A): every member once
            else:
                scores = self.model(**x).numpy()
        return self.policy.decide(scores, requests.mask, rng=rng)

    def learn(self, requests: Requests, decisions: Decisions, rewards: np.ndarray) -> None:
        self.log.feeds.append(self.featurizer(requests, self.input_names))
        self.log.outcome.append((decisions.action, decisions.propensity, rewards, requests.row_key))
        self.rounds += 1
        if (
            self.rounds >= self.cfg.warmup_rounds
            and (self.rounds - self.cfg.warmup_rounds) % max(1, self.cfg.retrain_every) == 0
        ):
            self.retrain()

    def retrain(self) -> None:
        t0 = time.perf_counter()
        with _threads(self.cfg.threads):
            self._fit()
        self.model.eval()
        self.trained = True
        self.train_seconds += time.perf_counter() - t0
        if self.cfg.serve == "onnx":
            t1 = time.perf_counter()
            self.export()
            self.export_seconds += time.perf_counter() - t1

    def _fit(self) -> None:
        """``epochs`` passes of Adam over everything logged so far, from the current weights."""
        feeds = {k: torch.from_numpy(_pad_concat([f[k] for f in self.log.feeds])) for k in self.input_names}
        action, pscore, reward, key = (
            torch.from_numpy(np.concatenate(parts)) for parts in zip(*self.log.outcome, strict=True)
        )
        pscore, reward = pscore.float(), reward.float()
        n = len(action)
        weights = None
        if self.kind == "thompson" and self.cfg.bootstrap:
            weights = poisson_bootstrap_weights(key, self.cfg.n_members, self.seed)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rounds)
        self.model.train()
        for _ in range(self.cfg.epochs):
            order = torch.randperm(n, generator=gen)
            for lo in range(0, n, self.cfg.batch_size):
                idx = order[lo : lo + self.cfg.batch_size]
                x = {k: v[idx] for k, v in feeds.items()}
                parts = compute_loss(
                    self.objective,
                    self.model.member_logits(**x),
                    x["candidate_mask"],
                    action[idx],
                    reward[idx],
                    pscore[idx],
                    None if weights is None else weights[idx],
                )
                self.optimiser.zero_grad(set_to_none=True)
                parts["loss"].backward()
                self.optimiser.step()

    def export(self) -> None:
        """Export the current weights with ``deepbandit.export`` and load them in an ``ArtworkService``."""
        from deepbandit.export.onnx_export import export_bundle
        from deepbandit.serving import ArtworkService

        out = self.work_dir / self.name / f"round-{self.rounds:04d}"
        spec = {"name": self.policy.name, "min_propensity": self.cfg.min_propensity}
        if self.kind == "epsilon":
            spec["epsilon"] = self.cfg.epsilon
        if self.kind == "thompson":
            spec["kind"] = "ensemble"
        export_bundle(
            self._bundle(),
            out,
            policy=spec,
            parity_batch_sizes=(7,),
            parity_candidates=(5,),
            max_history=self.featurizer.max_history,
        )
        self.service = ArtworkService.from_dir(out, providers=["CPUExecutionProvider"])
