"""Agents of the closed loop: each decides a batch of requests and learns from its own logged outcomes.

An agent has ``name``, ``act(requests, rng) -> Decisions`` (``deepbandit.policies.Decisions``: action
(B,), propensity (B,), action_dist (B, A), propensity_kind) and ``learn(requests, decisions, rewards)``,
called once per round with the round's rewards (B,) (batched, delayed feedback, as in production).

* ``RandomAgent``: uniform over the candidates.
* ``UnpersonalisedThompson``: Beta-Bernoulli Thompson sampling per image (images belong to one title, so
  per (title, image)); the same posterior for every member.
* ``LinUCB``: shared-parameter LinUCB (Li et al. 2010) on phi(x, a) = context vector (x) image embedding.
* ``DeepAgent``: our network (``deepbandit.models``), retrained warm-started on everything it logged with
  the training step of ``deepbandit train``, exported to ONNX and served by
  ``deepbandit.serving.ArtworkService`` with its policy (``deep_<policy>``: greedy, epsilon_greedy,
  softmax, thompson).
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow.compute as pc
import torch

from deepbandit.data.features import ModelInputs
from deepbandit.data.tensors import ImageTable, ImpressionBatch, table_to_batch, title_genre_matrix
from deepbandit.data.vocab import FeatureVocabs
from deepbandit.errors import ConfigError
from deepbandit.loop.environments import Environment, Requests, impressions_table
from deepbandit.models.bundle import ModelBundle
from deepbandit.models.encoders import ImageEmbeddingLookup, ModelConfig
from deepbandit.models.uncertainty import UncertaintyConfig, build_scorer, capabilities, check_uncertainty
from deepbandit.policies import Decisions, EpsilonGreedy, Thompson, sample_actions
from deepbandit.policies.config import PolicyConfig
from deepbandit.training.config import LossConfig, ModelGroupConfig
from deepbandit.training.fit import (
    OptimConfig,
    TrainingStep,
    fit_conjugate_posterior,
    fit_epochs,
    fit_steps,
    make_optimizer,
)


class Agent(Protocol):
    """What ``run_loop`` needs of an agent (a user's own agent is any object with these members).

    ``act`` decides a round's B requests with ``rng`` (the agent's own stream for that round, so a run is
    reproducible) and returns ``Decisions``: ``action`` (B,) candidate positions, ``action_dist`` (B, A)
    the distribution the action was drawn from (sums to 1 over the row's valid candidates
    ``requests.mask``, 0 on padding), ``propensity`` (B,) = ``action_dist`` at the action, and
    ``propensity_kind`` ("exact" or "mc_estimate:<M>"); the loop refuses anything else with the round and
    request. ``learn`` receives the same requests, those decisions and their rewards (B,), once per round
    after every agent has acted (batched, delayed feedback, as in production). An optional
    ``describe() -> dict`` adds the agent's settings to loop.json's record of what ran.
    """

    name: str

    def act(self, requests: Requests, rng: np.random.Generator) -> Decisions: ...

    def learn(self, requests: Requests, decisions: Decisions, rewards: np.ndarray) -> None: ...


def best_with_random_ties(scores: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Decisions:
    """The best valid candidate of each row, ties broken uniformly at random, with that exact
    distribution logged (1/k on each of k tied best candidates). Breaking ties toward the lowest position
    would make a learner whose scores start equal (LinUCB) pull one arm for a whole round."""
    s = np.where(mask, scores, -np.inf)
    best = s == s.max(axis=1, keepdims=True)
    dist = best / best.sum(axis=1, keepdims=True)
    action = sample_actions(dist, rng.random(len(s)))
    return Decisions(action, dist[np.arange(len(s)), action], dist, "exact")


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

    def describe(self) -> dict:
        return {
            "prior": "Beta(1, 1)",
            "n_samples": self.n_samples,
            "min_propensity": self.policy.min_propensity,
        }

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
    theta^T phi + alpha sqrt(phi^T A^-1 phi). The best score is shown (ties at random, propensity 1/k among
    k tied candidates, else 1), updated once a round."""

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
        self.ridge = ridge

    def describe(self) -> dict:
        return {
            "alpha": self.alpha,
            "ridge": self.ridge,
            "n_features": len(self.theta),
            "ties": "random, 1/k",
        }

    def _phi(self, requests: Requests) -> np.ndarray:
        """(B, A, P * D) features."""
        c = self.context(requests)
        e = self.embedding[np.maximum(requests.candidates, 0)]
        return (c[:, None, :, None] * e[:, :, None, :]).reshape(*e.shape[:2], -1)

    def act(self, requests: Requests, rng: np.random.Generator) -> Decisions:
        phi = self._phi(requests)
        width = np.sqrt(np.maximum(np.einsum("bai,ij,baj->ba", phi, self.inverse, phi), 0.0))
        return best_with_random_ties(phi @ self.theta + self.alpha * width, requests.mask, rng)

    def learn(self, requests: Requests, decisions: Decisions, rewards: np.ndarray) -> None:
        phi = self._phi(requests)[np.arange(len(requests)), decisions.action]
        self.gram += phi.T @ phi
        self.b += phi.T @ rewards
        self.inverse = np.linalg.inv(self.gram)
        self.theta = self.inverse @ self.b


@dataclass
class DeepAgentsConfig:
    """The deep agents: the network, uncertainty, loss and policies come from the same config groups as
    ``deepbandit train`` (conf/model, conf/uncertainty, conf/loss, conf/policy), the optimiser is trainer's
    (``OptimConfig``) and the step is training's (``deepbandit.training.fit``).

    Agent ``deep_<policy>`` decides with ``policies[<policy>]``: a policy that samples a posterior
    (thompson) samples ``uncertainty``, the others train one network. Agent ``deep_<posterior>`` does
    Thompson sampling (``policies.thompson``) from ``posteriors[<posterior>]``, so several posteriors run
    side by side (``deep_neural_linear``, ``deep_randomised_prior``). Each retrain continues from the
    previous weights and optimiser state (warm start): ``epochs`` passes over everything the agent logged,
    or ``steps_per_round`` minibatch steps drawn from it. A neural-linear posterior (a conjugate Bayesian
    last layer) is updated exactly after every round and refitted on the whole log after each retrain,
    when its features have moved. serve: "onnx" (decide through ``ArtworkService``: the real hand-off; a
    full export every ``export_every`` retrains, the new weights put into the same graph in between) or
    "torch" (the torch model on the same features; faster, for tests and sweeps).
    """

    # The defaults are conf/loop.yaml's choices (model=small, uncertainty=ensemble with 3 members and no
    # prior, loss=reward, the four policies, the two posteriors, lr 0.003, batch 512), so LoopConfig() in
    # Python runs the CLI's loop; tests/loop/test_loop.py checks that the two agree.
    model: ModelGroupConfig = field(
        default_factory=lambda: ModelGroupConfig(hidden=64, tower_dim=32, head_dim=64, id_dim=16)
    )
    # deep_thompson's posterior; bootstrap seeds add the agent's seed
    uncertainty: UncertaintyConfig = field(
        default_factory=lambda: UncertaintyConfig(kind="ensemble", n_members=3, prior_scale=0.0)
    )
    # agent deep_<name> samples posteriors[<name>] (conf/uncertainty/<kind>.yaml) with policies.thompson
    posteriors: dict[str, UncertaintyConfig] = field(
        default_factory=lambda: {
            "neural_linear": UncertaintyConfig(kind="neural_linear"),
            "randomised_prior": UncertaintyConfig(kind="ensemble", n_members=3, prior_scale=1.0),
        }
    )
    loss: LossConfig = field(default_factory=LossConfig)
    # agent deep_<name> decides with policies[<name>] (conf/policy/<name>.yaml)
    policies: dict[str, PolicyConfig] = field(
        default_factory=lambda: {
            "greedy": PolicyConfig(name="greedy"),
            "epsilon_greedy": PolicyConfig(name="epsilon_greedy"),
            "softmax": PolicyConfig(name="softmax", temperature=0.5),
            "thompson": PolicyConfig(name="thompson", epsilon=0.0),
        }
    )
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3, batch_size=512))
    epochs: int = 2  # passes over everything the agent logged, per retrain (when steps_per_round is null)
    # minibatch steps per retrain drawn with replacement from everything logged: the online learner's
    # update, whose cost does not grow with the log; null: epochs full passes
    steps_per_round: int | None = None
    warmup_rounds: int = 1  # rounds served uniformly at random before the first model
    # the learning rate of retrain r (counted from 1): optim.lr until lr_decay_after retrains, then
    # optim.lr * sqrt(lr_decay_after / r), so that late updates refine rather than jitter the fit
    # (constant-lr Adam keeps a noise floor); null: constant
    lr_decay_after: int | None = None
    # rounds between retrains of the network (a neural-linear last layer is updated every round)
    retrain_every: int = 1
    serve: str = "onnx"  # onnx: the exported graph through ArtworkService; torch: the torch model
    # serve=onnx: a full export (trace, parity check, manifest) on the first retrain and every this many
    # after it; in between, the served session takes the new weights as initializers (the same graph)
    export_every: int = 10
    # torch threads while training: these small networks train several times faster on one thread than
    # on oversubscribed cores (0: leave torch's setting)
    threads: int = 1
    max_history: int = 32  # most recent played titles the model reads per request

    def agent_names(self) -> list[str]:
        return [f"deep_{name}" for name in [*self.policies, *self.posteriors]]

    def policy(self, agent: str) -> PolicyConfig:
        """The policy of agent ``deep_<name>``; ConfigError if there is none."""
        name = agent.removeprefix("deep_")
        if name in self.posteriors:
            return self.policies.get("thompson", PolicyConfig(name="thompson"))
        if name not in self.policies:
            raise ConfigError(
                f"loop agent {agent!r}: no policy deep.policies.{name} and no posterior deep.posteriors.{name}; "
                f"deep agents are {', '.join(self.agent_names())}"
            )
        return self.policies[name]

    def uncertainty_of(self, agent: str) -> UncertaintyConfig:
        """The posterior agent ``deep_<name>`` samples (none for a policy that samples none)."""
        name = agent.removeprefix("deep_")
        if name in self.posteriors:
            return self.posteriors[name]
        return self.uncertainty if self.policy(agent).name == "thompson" else UncertaintyConfig(kind="none")

    def check(self, agent: str) -> None:
        """Refuse an agent that cannot work, before the loop starts."""
        if self.serve not in ("onnx", "torch"):
            raise ConfigError(f"loop config: deep.serve must be 'onnx' or 'torch', got {self.serve!r}")
        if self.steps_per_round is not None and self.steps_per_round < 1:
            raise ConfigError(
                f"loop config: deep.steps_per_round must be >= 1 or null, got {self.steps_per_round}"
            )
        if self.lr_decay_after is not None and self.lr_decay_after < 1:
            raise ConfigError(
                f"loop config: deep.lr_decay_after must be >= 1 or null, got {self.lr_decay_after}"
            )
        for name in ("epochs", "retrain_every", "max_history", "export_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"loop config: deep.{name} must be >= 1, got {getattr(self, name)}")
        both = sorted(set(self.policies) & set(self.posteriors))
        if both:
            raise ConfigError(
                f"loop config: deep.policies and deep.posteriors both name {', '.join(both)}; agent deep_<name> "
                "must mean one of them"
            )
        policy = self.policy(agent)
        unc = self.uncertainty_of(agent)
        check_uncertainty(unc, self.model.dropout, self.model.last_layer_dropout)
        offers = capabilities(unc)
        name = agent.removeprefix("deep_")
        where = f"deep.posteriors.{name}" if name in self.posteriors else "deep.uncertainty"
        if policy.name == "thompson" and offers.posterior == "none":
            raise ConfigError(f"loop agent {agent}: thompson needs {where} with a posterior, got {unc.kind}")
        if policy.name == "thompson" and self.serve == "onnx" and not offers.exported_posterior:
            raise ConfigError(
                f"loop agent {agent}: {where}={unc.kind} is not served through ONNX (ensembles and neural-linear are); "
                "use deep.serve=torch"
            )
        policy.build(offers.thompson_kind)


class Featurizer:
    """Request table -> model inputs, once per round for every deep agent: the serving feature code
    (``deepbandit.serving.features``) on vocabularies fitted on the catalogue and the first requests, so
    the torch path, training and the ONNX service see identical inputs."""

    def __init__(self, env: Environment, first: Requests, max_history: int = 32):
        from deepbandit.serving.features import ImageIndex

        images = env.images_table()
        self.vocabs = FeatureVocabs.build(first.table, images=images, titles=env.titles_table())
        self.image_embedding = ImageTable.from_table(images, self.vocabs.image).embedding
        self.title_genres = title_genre_matrix(env.titles_table(), self.vocabs)
        self.vocab_by_name = {
            n: getattr(self.vocabs, n) for n in FeatureVocabs.NAMES
        }  # as build_inputs takes them
        self.image_index = ImageIndex(self.vocabs.image)
        self.member_features_dim = env.member_features_dim
        self.max_history = max_history

    def model_config(self, model: ModelGroupConfig) -> ModelConfig:
        return model.model_config(
            self.vocabs, self.title_genres.shape[1], self.image_embedding.shape[1], self.member_features_dim
        )

    def __call__(self, requests: Requests, input_names: list[str]) -> dict[str, np.ndarray]:
        if "feeds" not in requests.cache:
            from deepbandit.serving.features import build_inputs, from_arrow

            batch = from_arrow(requests.table, self.member_features_dim)
            graph = build_inputs(
                batch,
                self.vocab_by_name,
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

    def logged(self, requests: Requests, decisions: Decisions, rewards: np.ndarray) -> ImpressionBatch:
        """A round as training reads it: the logged impressions (the log contract) through ``table_to_batch``."""
        table = impressions_table(requests, decisions, rewards)
        return table_to_batch(table, self.vocabs, max_history=self.max_history)


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


class DeepAgent:
    """Our network as a bandit, deciding with its policy (``DeepAgentsConfig.policy``): greedy,
    epsilon-greedy, softmax, or Thompson sampling from the posterior of ``deep.uncertainty`` (a
    bootstrapped ensemble by default: exact propensities from the per-member winners)."""

    def __init__(
        self, name: str, featurizer: Featurizer, cfg: DeepAgentsConfig, seed: int, work_dir: Path | None
    ):
        cfg.check(name)
        self.name, self.cfg = name, cfg
        self.policy_cfg = cfg.policy(name)
        self.featurizer = featurizer
        self.model_cfg = featurizer.model_config(cfg.model)
        unc = cfg.uncertainty_of(name)
        self.unc_cfg = replace(unc, bootstrap_seed=unc.bootstrap_seed + seed)
        offers = capabilities(self.unc_cfg)
        self.policy = self.policy_cfg.build(offers.thompson_kind)
        self.samples = self.policy.input_ndim == 3  # decides on posterior draws
        self.sampled = offers.posterior == "sampled"  # draws need random numbers (not every member once)
        self.conjugate = offers.conjugate_last_layer
        n = self.policy_cfg.n_samples
        self.n_draws = n if n is not None else offers.posterior_draws
        torch.manual_seed(seed)
        self.model = build_scorer(self.model_cfg, self.unc_cfg, featurizer.title_genres)
        self.step = TrainingStep(
            self.model,
            ImageEmbeddingLookup(featurizer.image_embedding),
            cfg.loss.objective(),
            transform=cfg.loss.transform,
            threshold=cfg.loss.threshold,
            bootstrap_seed=self.unc_cfg.bootstrap_seed if offers.bootstrap_members else None,
        )
        self.optimizer = make_optimizer(self.model, cfg.optim)
        from deepbandit.export.graph import input_names

        self.input_names = input_names(self._bundle())
        self.seed, self.rounds, self.trained = seed, 0, False
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="loop-"))
        self.service = None
        self.logged: list[ImpressionBatch] = []
        self.row_keys: list[np.ndarray] = []
        self.train_seconds = 0.0
        self.export_seconds = 0.0
        self.retrains, self.exports, self.refreshes = 0, 0, 0
        self.graph = None  # the exported onnx.ModelProto that refresh() puts new weights into

    def describe(self) -> dict:
        """The settings this agent ran with (its policy, posterior, network, loss, optimiser, schedule)."""
        return {
            "policy": asdict(self.policy_cfg),
            "uncertainty": asdict(self.unc_cfg),
            "posterior_draws": self.n_draws if self.samples else None,
            "model": asdict(self.model_cfg),
            "loss": asdict(self.cfg.loss),
            "optim": asdict(self.cfg.optim),
            "update": {"steps_per_round": self.cfg.steps_per_round}
            if self.cfg.steps_per_round
            else {"epochs": self.cfg.epochs},
            "conjugate_last_layer_every_round": self.conjugate,
            **{k: getattr(self.cfg, k) for k in ("warmup_rounds", "retrain_every", "serve", "max_history")},
            **({"export_every": self.cfg.export_every} if self.cfg.serve == "onnx" else {}),
        }

    def _bundle(self) -> ModelBundle:
        return ModelBundle.from_model(
            self.model,
            self.model_cfg,
            self.unc_cfg,
            self.featurizer.vocabs,
            self.featurizer.image_embedding,
            self.featurizer.title_genres,
            meta={"source": "deepbandit loop", "agent": self.name, "policy": asdict(self.policy_cfg)},
        )

    def act(self, requests: Requests, rng: np.random.Generator) -> Decisions:
        if not self.trained:
            return uniform_decisions(requests.mask, rng)
        if self.service is not None:
            out = self.service.decide(requests.table, rng=rng)
            if out.errors:
                row, message = next(iter(out.errors.items()))
                raise RuntimeError(f"{self.name}: the service refused request {row}: {message}")
            return Decisions(out.action, out.propensity, out.action_dist, out.propensity_kind)
        feeds = self.featurizer(requests, self.input_names)
        with torch.no_grad(), _threads(self.cfg.threads):
            x = ModelInputs(**{k: torch.from_numpy(v) for k, v in feeds.items()})
            if self.samples:
                # sampled posteriors draw from the round's own stream, so a run is reproducible
                generator = torch.Generator().manual_seed(int(rng.integers(2**62))) if self.sampled else None
                scores = self.model.posterior_samples(x, self.n_draws, generator).numpy()  # (B, S, A)
            else:
                scores = self.model(x).numpy()
        return self.policy.decide(scores, requests.mask, rng=rng)

    def learn(self, requests: Requests, decisions: Decisions, rewards: np.ndarray) -> None:
        batch = self.featurizer.logged(requests, decisions, rewards)
        self.logged.append(batch)
        self.row_keys.append(requests.row_key)
        self.rounds += 1
        if (
            self.rounds >= self.cfg.warmup_rounds
            and (self.rounds - self.cfg.warmup_rounds) % self.cfg.retrain_every == 0
        ):
            self.retrain()
        elif self.conjugate and self.trained:
            # the last layer learns every round in closed form (exact: the features have not moved)
            t0 = time.perf_counter()
            self.fit_posterior(batch)
            self.train_seconds += time.perf_counter() - t0

    def fit_posterior(self, data: ImpressionBatch, reset: bool = False) -> None:
        """Add ``data``'s observed rows to the conjugate last layer (``reset``: refit from the prior)."""
        with _threads(self.cfg.threads):
            fit_conjugate_posterior(self.step, data, reset=reset)
        if self.service is not None:  # the served graph carries the posterior: hand it the new one
            self.refresh()

    def retrain(self) -> None:
        t0 = time.perf_counter()
        if len(self.logged) > 1:  # the buffer: everything logged, concatenated once per retrain
            self.logged = [ImpressionBatch.cat(self.logged)]
            self.row_keys = [np.concatenate(self.row_keys)]
        data, keys = self.logged[0], torch.from_numpy(self.row_keys[0])
        if self.cfg.lr_decay_after is not None:
            scale = min(1.0, (self.cfg.lr_decay_after / (self.retrains + 1)) ** 0.5)
            for group in self.optimizer.param_groups:
                group["lr"] = self.cfg.optim.lr * scale
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rounds)
        with _threads(self.cfg.threads):
            if self.cfg.steps_per_round is None:
                fit_epochs(self.step, self.optimizer, data, keys, epochs=self.cfg.epochs,
                           batch_size=self.cfg.optim.batch_size, generator=generator,
                           gradient_clip_val=self.cfg.optim.gradient_clip_val)  # fmt: skip
            else:
                fit_steps(self.step, self.optimizer, data, keys, steps=self.cfg.steps_per_round,
                          batch_size=self.cfg.optim.batch_size, generator=generator,
                          gradient_clip_val=self.cfg.optim.gradient_clip_val)  # fmt: skip
        self.model.eval()
        if self.conjugate:  # the features moved: refit the last layer on everything logged
            with _threads(self.cfg.threads):
                fit_conjugate_posterior(self.step, data, reset=True)
        self.trained = True
        self.train_seconds += time.perf_counter() - t0
        if self.cfg.serve == "onnx":
            t1 = time.perf_counter()
            if self.service is None or self.retrains % self.cfg.export_every == 0:
                self.export()
            else:
                self.refresh()
            self.export_seconds += time.perf_counter() - t1
        self.retrains += 1

    def _weights(self) -> dict[str, np.ndarray]:
        # the exported graph wraps the scorer as ExportModule.model (unfolded initializers: "model.<key>")
        return {f"model.{k}": v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}

    def export(self) -> None:
        """Export the current weights with ``deepbandit.export`` and load them in an ``ArtworkService``."""
        import onnx

        from deepbandit.export.onnx_export import export_bundle
        from deepbandit.serving import ArtworkService

        out = self.work_dir / self.name / f"round-{self.rounds:04d}"
        result = export_bundle(
            self._bundle(),
            out,
            policy=self.policy_cfg,
            parity_batch_sizes=(7,),
            parity_candidates=(5,),
            max_history=self.featurizer.max_history,
            fold_constants=False,
            precomputed=False,  # refresh() replaces the embedding graph's weights; a stored tower would go stale
        )
        self.service = ArtworkService.from_dir(out, providers=["CPUExecutionProvider"])
        self.graph = onnx.load(result.files["model"])
        self.exports += 1

    def refresh(self) -> None:
        """Serve the current weights in the exported graph without exporting it again: every initializer
        of the graph is replaced by the weight of the same name (shape and dtype checked; the export keeps
        them unfolded) and a session is built from the result, so the service computes exactly the torch
        model (tests/loop/test_wheel.py checks the scores against torch). Overriding initializers through
        onnxruntime's ``SessionOptions.add_initializer`` is not enough: its constant folding still reads
        the stored values."""
        from onnx import numpy_helper

        from deepbandit.serving.session import OnnxSession

        weights = self._weights()
        # every initializer the graph holds gets its new value; weights the graph never reads (the
        # neural-linear sufficient statistics: only its mean and covariance factor are in the graph) stay out
        unknown = sorted({i.name for i in self.graph.graph.initializer} - set(weights))
        if unknown:
            raise RuntimeError(
                f"{self.name}: the exported graph's initializers do not match the model's weights "
                f"({', '.join(unknown[:3])} are not weights of the model); cannot refresh the served session"
            )
        for init in self.graph.graph.initializer:
            old, new = numpy_helper.to_array(init), weights[init.name]
            if old.shape != new.shape or old.dtype != new.dtype:
                raise RuntimeError(
                    f"{self.name}: initializer {init.name} is {old.dtype}{list(old.shape)} in the exported "
                    f"graph but {new.dtype}{list(new.shape)} in the model; cannot refresh the served session"
                )
            init.CopyFrom(numpy_helper.from_array(new, init.name))
        self.service.session = OnnxSession(self.graph.SerializeToString(), ["CPUExecutionProvider"])
        self.refreshes += 1
