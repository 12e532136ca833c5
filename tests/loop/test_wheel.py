"""The Wheel bandit, reward ranges, the loop's normalised regret and the online learner's steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import blobs

from deepbandit.errors import ConfigError, DataError
from deepbandit.loop.environments import WheelEnvironment
from deepbandit.loop.loop import LoopConfig, WheelConfig, run_loop


def test_wheel_means_follow_the_paper():
    env = WheelEnvironment(0.5, seed=0)
    xy = np.array([[0.1, 0.1], [0.6, 0.6], [-0.6, 0.6], [-0.6, -0.6], [0.6, -0.6]])
    means = env.means(xy)
    np.testing.assert_array_equal(means[0], [1.0, 1.0, 1.0, 1.0, 1.2])  # inside delta: arm 5 is best
    for row, arm in zip(range(1, 5), range(4), strict=True):  # outside: the quadrant's arm pays 50
        expected = np.array([1.0, 1.0, 1.0, 1.0, 1.2])
        expected[arm] = 50.0
        np.testing.assert_array_equal(means[row], expected)


def test_wheel_rewards_are_noisy_bounded_and_common():
    env = WheelEnvironment(0.9, seed=3)
    requests = env.next_requests(4000)
    xy = requests.table.column("member_features").combine_chunks().flatten().to_numpy().reshape(-1, 2)
    assert (np.hypot(xy[:, 0], xy[:, 1]) <= 1).all()
    q = env.expected_rewards(requests)
    actions = np.random.default_rng(0).integers(0, 5, len(requests))
    r = env.sample_rewards(requests, actions)
    assert ((r >= 0) & (r <= 1)).all()
    np.testing.assert_array_equal(r, env.sample_rewards(requests, actions))  # a function of request and arm
    noise = (r - q[np.arange(len(r)), actions]) * env.scale
    # sd 0.01 noise: the sample sd lies within 5 standard errors (sd * sqrt(2 / n)) of it
    assert abs(noise.std() - 0.01) < 5 * 0.01 * np.sqrt(2 / len(r))
    with pytest.raises(ConfigError, match="leave"):
        WheelEnvironment(0.5, noise=0.1)


def test_wheel_loop_reports_normalised_regret(tmp_path):
    cfg = LoopConfig(
        environment="wheel", wheel=WheelConfig(delta=0.5), n_rounds=5, requests_per_round=200,
        agents=["random", "linucb"], progress=False, plots=False, keep_logs=False,
    )  # fmt: skip
    result = run_loop(cfg, out_dir=tmp_path)
    random, linucb = result["agents"]["random"], result["agents"]["linucb"]
    # random's regret is the uniform policy's by definition (expected rewards, 1,000 requests: about 2%
    # standard error), and a linear learner finds the quadrant arms within a few rounds
    assert abs(random["normalized_regret"] - 100) < 10
    assert linucb["normalized_regret"] < 60
    assert linucb["decisions_per_s"] > 0


class _Loud:
    """blobs with rewards 2: outside [0, 1]."""

    def __init__(self, declared=None):
        self.env = blobs()
        if declared is not None:
            self.reward_range = declared

    def __getattr__(self, name):
        return getattr(self.env, name)

    def sample_rewards(self, requests, actions):
        return 2.0 * self.env.sample_rewards(requests, actions) + 0.5


def test_rewards_outside_the_range_are_refused(tmp_path):
    cfg = LoopConfig(n_rounds=1, requests_per_round=20, agents=["random"], progress=False, plots=False)
    with pytest.raises(
        DataError, match=r"round 1, request \d+ \(agent random\): reward .* outside .*\[0, 1\]"
    ):
        run_loop(cfg, env=_Loud(), out_dir=tmp_path)
    with pytest.raises(ConfigError, match="reward_range .* is not inside"):
        run_loop(cfg, env=_Loud(declared=(0.0, 50.0)), out_dir=tmp_path)


def test_fit_steps_is_the_same_steps_run_by_hand():
    from deepbandit.loop.agents import DeepAgentsConfig, Featurizer
    from deepbandit.models.encoders import ImageEmbeddingLookup
    from deepbandit.models.uncertainty import UncertaintyConfig, build_scorer
    from deepbandit.policies import EpsilonGreedy
    from deepbandit.training.fit import OptimConfig, TrainingStep, fit_steps, make_optimizer

    env = WheelEnvironment(0.5, seed=1)
    requests = env.next_requests(300)
    featurizer = Featurizer(env, requests)
    decisions = EpsilonGreedy(1.0).decide(
        np.zeros(requests.mask.shape), requests.mask, rng=np.random.default_rng(0)
    )
    data = featurizer.logged(requests, decisions, env.sample_rewards(requests, decisions.action))
    keys = torch.from_numpy(requests.row_key)
    cfg = featurizer.model_config(DeepAgentsConfig().model)

    def fresh():
        torch.manual_seed(0)
        model = build_scorer(cfg, UncertaintyConfig(), featurizer.title_genres)
        step = TrainingStep(
            model, ImageEmbeddingLookup(featurizer.image_embedding), DeepAgentsConfig().loss.objective()
        )
        return model, step, make_optimizer(model, OptimConfig(lr=0.01))

    model_a, step_a, opt_a = fresh()
    fit_steps(step_a, opt_a, data, keys, steps=5, batch_size=64, generator=torch.Generator().manual_seed(7))
    model_b, step_b, opt_b = fresh()
    model_b.train()
    g = torch.Generator().manual_seed(7)
    for _ in range(5):
        rows = torch.randint(len(data), (64,), generator=g)
        loss = step_b(data[rows], keys[rows])["loss"]
        opt_b.zero_grad()
        loss.backward()
        opt_b.step()
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_neural_linear_agent_beats_uniform_and_the_unpersonalised_bandit(tmp_path):
    """A short Wheel loop (2,000 requests): Thompson sampling from the neural-linear posterior, updated
    every round, beats uniform and the unpersonalised bandit by 3 standard errors of the difference."""
    cfg = LoopConfig(
        environment="wheel", wheel=WheelConfig(delta=0.5), n_rounds=8, requests_per_round=250,
        agents=["random", "unpersonalised_ts", "deep_neural_linear"], progress=False, plots=False,
        keep_logs=False,
    )  # fmt: skip
    cfg.deep.serve, cfg.deep.steps_per_round = "torch", 60
    result = run_loop(cfg, out_dir=tmp_path)
    total = {name: a["total_regret"] for name, a in result["agents"].items()}
    # per-request regrets lie in [0, 49 / 50.1], so a difference of two agents' per-request regrets has sd
    # at most 1 and the difference of their totals over n requests a standard error below sqrt(n)
    margin = 3 * np.sqrt(cfg.n_rounds * cfg.requests_per_round)
    assert total["deep_neural_linear"] < total["random"] - margin, total
    assert total["deep_neural_linear"] < total["unpersonalised_ts"] - margin, total
    # its propensities are Monte Carlo shares of its posterior draws
    assert result["agents"]["deep_neural_linear"]["normalized_regret"] < 50


def _played(agent_name: str, cfg, seed: int, n_requests: int, n_rounds: int = 4):
    """A deep agent deciding and learning from a Wheel stream (delta 0.5): yields (agent, featurizer,
    requests) after each round it has learned from."""
    from deepbandit.loop.agents import DeepAgent, Featurizer

    env = WheelEnvironment(0.5, seed=seed)
    env.reset(seed)
    rounds = [env.next_requests(n_requests) for _ in range(n_rounds)]
    featurizer = Featurizer(env, rounds[0])
    agent = DeepAgent(agent_name, featurizer, cfg, seed=0, work_dir=None)
    rng = np.random.default_rng(0)
    for requests in rounds:
        decisions = agent.act(requests, rng)
        agent.learn(requests, decisions, env.sample_rewards(requests, decisions.action))
        yield agent, featurizer, requests


def test_neural_linear_last_layer_holds_every_logged_row_after_each_round():
    """Between retrains the conjugate last layer is updated with each round in closed form; after a
    retrain it is refitted on the whole log. Either way it equals a fit from scratch on everything logged
    at the current features (nothing forgotten, nothing counted twice)."""
    from deepbandit.data.tensors import ImpressionBatch
    from deepbandit.loop.agents import DeepAgentsConfig

    cfg = DeepAgentsConfig(serve="torch", steps_per_round=5, retrain_every=3)
    for k, (agent, _, _) in enumerate(_played("deep_neural_linear", cfg, seed=2, n_requests=120)):
        # rounds 1 and 4 retrain (warm-up 1, then every 3); rounds 2 and 3 only update the last layer
        logged = ImpressionBatch.cat(agent.logged)
        state = {k: v.clone() for k, v in agent.model.blr.state_dict().items()}
        agent.fit_posterior(logged, reset=True)
        for name, value in agent.model.blr.state_dict().items():
            torch.testing.assert_close(state[name], value, msg=f"round {k + 1}: {name}")
    assert agent.model.blr.n_seen.item() == 4 * 120


class _GreedyMeans:
    """A user's own agent: per-arm running means of the reward, greedy with 10% uniform exploration."""

    name = "my_means"

    def __init__(self, n_arms: int, exploration: float = 0.1):
        self.sums, self.counts, self.exploration = np.zeros(n_arms), np.zeros(n_arms), exploration

    def act(self, requests, rng):
        from deepbandit.policies import EpsilonGreedy

        ids = np.maximum(requests.candidates, 0)
        means = self.sums[ids] / np.maximum(self.counts[ids], 1)
        return EpsilonGreedy(self.exploration).decide(means, requests.mask, rng=rng)

    def learn(self, requests, decisions, rewards):
        arm = requests.candidates[np.arange(len(requests)), decisions.action]
        np.add.at(self.sums, arm, rewards)
        np.add.at(self.counts, arm, 1)

    def describe(self):
        return {"exploration": self.exploration}


def test_a_users_own_agent_runs_next_to_built_in_ones(tmp_path):
    import json

    cfg = LoopConfig(
        environment="wheel", n_rounds=3, requests_per_round=100, progress=False, plots=False,
        keep_logs=True,
    )  # fmt: skip
    result = run_loop(cfg, out_dir=tmp_path, agents=["random", _GreedyMeans(5), "linucb"])
    assert list(result["agents"]) == ["random", "my_means", "linucb"]
    ran = json.loads((tmp_path / "loop.json").read_text())["ran"]
    assert ran["agents"]["my_means"] == {"class": "test_wheel._GreedyMeans", "exploration": 0.1}
    assert ran["agents"]["linucb"]["alpha"] == cfg.linucb_alpha
    assert ran["environment"]["delta"] == 0.5 and ran["environment"]["reward_range"] == [0.0, 1.0]
    assert ran["versions"]["numpy"] == np.__version__
    assert (tmp_path / "logs" / "my_means.parquet").exists()


class _Liar(_GreedyMeans):
    name = "liar"

    def act(self, requests, rng):
        d = super().act(requests, rng)
        d.propensity[7] = 0.5 * d.propensity[7]
        return d


def test_an_agent_that_logs_a_wrong_propensity_or_breaks_the_protocol_is_refused(tmp_path):
    cfg = LoopConfig(environment="wheel", n_rounds=1, requests_per_round=20, progress=False, plots=False)
    with pytest.raises(DataError, match=r"agent liar: round 1, request 7: propensity .* is not action_dist"):
        run_loop(cfg, out_dir=tmp_path, agents=[_Liar(5)])
    with pytest.raises(ConfigError, match=r"agents\[1\] \(object\) does not follow the Agent protocol"):
        run_loop(cfg, out_dir=tmp_path, agents=["random", object()])
    with pytest.raises(ConfigError, match="distinct"):
        run_loop(cfg, out_dir=tmp_path, agents=[_GreedyMeans(5), _GreedyMeans(5)])
    with pytest.raises(ConfigError, match="no policy deep.policies.nope"):
        run_loop(cfg, out_dir=tmp_path, agents=["deep_nope"])


@pytest.mark.parametrize("agent_name", ["deep_thompson", "deep_neural_linear"])
def test_onnx_serving_takes_new_weights_without_a_new_export(agent_name):
    """serve=onnx: one full export, then every retrain (and every neural-linear last-layer update) hands
    the new weights to the served session; the service's scores and posterior draws stay those of the
    torch model (the policy and its propensities are exact)."""
    from deepbandit.loop.agents import DeepAgentsConfig

    cfg = DeepAgentsConfig(serve="onnx", steps_per_round=3, export_every=10)
    noise = torch.randn(6, cfg.model.head_dim + 1, generator=torch.Generator().manual_seed(1))
    for agent, featurizer, requests in _played(agent_name, cfg, seed=4, n_requests=60):
        feeds = featurizer(requests, agent.input_names)
        if agent.conjugate:
            feeds["posterior_noise"] = noise.numpy()
        served = agent.service.session.run(feeds, ["scores", "posterior_samples"])
        with torch.no_grad():
            x = {k: torch.from_numpy(v) for k, v in feeds.items() if k != "posterior_noise"}
            draws = (
                agent.model.posterior_from_noise(x, noise)
                if agent.conjugate
                else agent.model.posterior_samples(x)
            )
            np.testing.assert_allclose(served["scores"], agent.model(x).numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(served["posterior_samples"], draws.numpy(), rtol=1e-5, atol=1e-4)
    assert (agent.exports, agent.refreshes) == (1, 3)
    # a graph whose initializers are not the model's weights is refused, not served half-updated
    from onnx import numpy_helper

    agent.graph.graph.initializer.append(numpy_helper.from_array(np.zeros(2, np.float32), "folded::constant"))
    with pytest.raises(RuntimeError, match="initializers do not match"):
        agent.refresh()


def test_neural_linear_is_served_through_onnx_with_its_posterior_refreshed_every_round(tmp_path):
    cfg = LoopConfig(
        environment="wheel", n_rounds=4, requests_per_round=80, agents=["deep_neural_linear"],
        progress=False, plots=False, keep_logs=True,
    )  # fmt: skip
    cfg.deep.steps_per_round, cfg.deep.retrain_every = 5, 2
    result = run_loop(cfg, out_dir=tmp_path)
    entry = result["agents"]["deep_neural_linear"]
    # retrains after rounds 1 and 3 (one export, one refresh), last-layer updates after rounds 2 and 4
    assert (entry["exports"], entry["refreshes"]) == (1, 3)
    kinds = set(result["logs"]["deep_neural_linear"].column("propensity_kind").to_pylist())
    assert kinds == {
        "exact",
        f"mc_estimate:{cfg.deep.posteriors['neural_linear'].n_samples}",
    }  # warm-up: uniform


def test_learning_rate_decays_after_the_configured_retrains():
    from deepbandit.loop.agents import DeepAgentsConfig

    cfg = DeepAgentsConfig(serve="torch", steps_per_round=1, lr_decay_after=2)
    lrs = []
    for agent, _, _ in _played("deep_greedy", cfg, seed=5, n_requests=40):
        lrs.append(agent.optimizer.param_groups[0]["lr"])
    base = cfg.optim.lr
    np.testing.assert_allclose(lrs, [base, base, base * np.sqrt(2 / 3), base * np.sqrt(2 / 4)])
