"""The closed loop: rounds of requests decided by every agent on the same stream, regret against the oracle.

Per round r: the environment hands out B requests; every agent decides them (its own rng stream, keyed by
(seed, agent, round)); rewards come from the environment with common random numbers (same request and same
image: same reward whichever agent showed it); every agent learns from its own outcomes (deep agents retrain
warm-started and re-export). Regret of a round = sum over its requests of (oracle expected reward - expected
reward of the chosen image): expected, not sampled, so it carries no reward noise.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from deepbandit.atomic import write_text_atomic
from deepbandit.errors import ConfigError, DataError
from deepbandit.loop.agents import (
    Agent,
    DeepAgent,
    DeepAgentsConfig,
    Featurizer,
    LinUCB,
    RandomAgent,
    UnpersonalisedThompson,
)
from deepbandit.loop.environments import (
    ArtworkEnvironment,
    ClassificationEnvironment,
    Environment,
    Requests,
    WheelEnvironment,
    impressions_table,
)
from deepbandit.loop.vw_agent import VowpalWabbitAgent, VWConfig, vw_available
from deepbandit.policies import Decisions
from deepbandit.sim.world import WorldConfig

log = logging.getLogger(__name__)

# and deep_<name> for every policy of deep.policies and every posterior of deep.posteriors
BASELINE_AGENTS = ("random", "unpersonalised_ts", "linucb", "vw")
DEFAULT_AGENTS = (
    "random",
    "unpersonalised_ts",
    "linucb",
    "deep_greedy",
    "deep_epsilon_greedy",
    "deep_thompson",
    "vw",
)


@dataclass
class WheelConfig:
    """The Wheel bandit (``environment=wheel``; ``WheelEnvironment``)."""

    delta: float = 0.5  # radius inside which the four high-paying arms pay 1.0; larger is harder
    noise: float = 0.01  # sd of the Gaussian reward noise before scaling (the paper's 0.01)
    scale: float = 50.1  # rewards are divided by this so they lie in [0, 1]


@dataclass
class LoopConfig:
    """``deepbandit loop`` (the ``loop_schema`` of conf/loop.yaml)."""

    environment: str = "artwork"  # artwork | digits | wheel
    world: WorldConfig = field(default_factory=WorldConfig)  # artwork only
    wheel: WheelConfig = field(default_factory=WheelConfig)  # wheel only
    n_days: int = 14  # artwork timeline: the run's requests spread over it
    start_date: str = "2024-01-01"  # artwork: UTC midnight of the first day (YYYY-MM-DD)
    n_rounds: int = 10  # rounds; every agent decides a round's requests, then learns from them
    requests_per_round: int = 4000  # requests per round, the same ones for every agent
    # baselines (random, unpersonalised_ts, linucb, vw), deep_<policy> for a policy of deep.policies and
    # deep_<posterior> (Thompson sampling) for a posterior of deep.posteriors
    agents: list[str] = field(default_factory=lambda: list(DEFAULT_AGENTS))
    ts_samples: int = 32  # posterior draws per request of the unpersonalised Thompson bandit
    linucb_alpha: float = 0.5  # linucb: weight alpha of the confidence width in the score
    deep: DeepAgentsConfig = field(default_factory=DeepAgentsConfig)
    vw: VWConfig = field(default_factory=VWConfig)  # the vw agent (skipped when vowpalwabbit is missing)
    seed: int = 0  # seeds the world, the request stream, the reward noise and the agents
    out_dir: str = "loop"  # run directory: loop.json, plots, logs/<agent>.parquet, exports/ (ONNX)
    keep_logs: bool = True  # write each agent's logged impressions as Parquet
    plots: bool = True  # write cumulative_regret.png and take_rate.png
    progress: bool = True  # show a progress bar over the rounds

    def validate(self, own_environment: bool = False, own_agents: bool = False) -> None:
        """Refuse settings that cannot run; ``own_environment`` / ``own_agents``: the caller passes its
        environment / agents, so ``environment`` / ``agents`` are not read."""
        if not own_environment and self.environment not in ENVIRONMENT_FACTORIES:
            raise ConfigError(
                f"loop config: environment must be one of {tuple(ENVIRONMENT_FACTORIES)}, "
                f"got {self.environment!r} (a user's own environment is passed to run_loop(cfg, env=...))"
            )
        known = [*AGENT_FACTORIES, *self.deep.agent_names()]
        unknown = [a for a in self.agents if a not in known and not a.startswith("deep_")]
        if not own_agents:
            if unknown or not self.agents or len(set(self.agents)) != len(self.agents):
                raise ConfigError(
                    f"loop config: agents must be distinct names among {known}, got {self.agents}"
                )
            for agent in self.agents:
                if agent.startswith("deep_"):
                    self.deep.check(agent)
        for name in ("n_rounds", "requests_per_round", "ts_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"loop config: {name} must be >= 1, got {getattr(self, name)}")


# name -> the environment of a loop config (a user's own environment is passed to run_loop directly)
ENVIRONMENT_FACTORIES: dict[str, Callable[[LoopConfig], Environment]] = {
    "artwork": lambda cfg: ArtworkEnvironment(
        cfg.world,
        cfg.n_rounds * cfg.requests_per_round,
        n_days=cfg.n_days,
        start_date=cfg.start_date,
        seed=cfg.seed,
    ),  # fmt: skip
    "digits": lambda cfg: ClassificationEnvironment.digits(seed=cfg.seed),
    "wheel": lambda cfg: WheelEnvironment(
        cfg.wheel.delta, noise=cfg.wheel.noise, scale=cfg.wheel.scale, seed=cfg.seed
    ),
}


def check_rewards(env: Environment, rewards: np.ndarray, agent: str, round_index: int) -> None:
    """Rewards must be finite and inside the environment's ``reward_range`` (default [0, 1]: the
    cross-entropy the deep agents train and the log contract both take rewards in [0, 1])."""
    low, high = getattr(env, "reward_range", (0.0, 1.0))
    bad = ~np.isfinite(rewards) | (rewards < low) | (rewards > high)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"environment {getattr(env, 'name', type(env).__name__)}: round {round_index + 1}, request {row} "
            f"(agent {agent}): reward {rewards[row]!r} is outside its reward range [{low:g}, {high:g}]; "
            "scale the environment's rewards into [0, 1]"
        )


def make_environment(cfg: LoopConfig) -> Environment:
    return ENVIRONMENT_FACTORIES[cfg.environment](cfg)


@dataclass
class AgentContext:
    """What an agent factory may read: the config, the environment, the first round's requests (for
    vocabularies), the agent's own seed and the run folder."""

    cfg: LoopConfig
    env: Environment
    first: Requests
    seed: int
    work_dir: Path

    @property
    def devices(self) -> list[str]:
        return sorted(set(self.first.table.column("device").to_pylist()))


def _vw(c: AgentContext):
    if vw_available():
        return VowpalWabbitAgent(c.env, c.devices, c.cfg.vw, c.seed)
    log.warning("agent 'vw' skipped: vowpalwabbit is not installed (pip install 'deepbandit[vw]')")
    return None


# name -> factory of a built-in agent (returning None: skipped, with a logged reason); deep_<name> agents
# are built from cfg.deep. An entry added here is a name `agents=[...]` accepts.
AGENT_FACTORIES: dict[str, Callable[[AgentContext], Agent | None]] = {
    "random": lambda c: RandomAgent(),
    "unpersonalised_ts": lambda c: UnpersonalisedThompson(
        int(np.asarray(c.env.images_table().column("image_id")).max()) + 1, c.cfg.ts_samples
    ),
    "linucb": lambda c: LinUCB(c.env, c.devices, alpha=c.cfg.linucb_alpha),
    "vw": _vw,
}
assert set(BASELINE_AGENTS) <= set(AGENT_FACTORIES)


def make_agents(
    cfg: LoopConfig, env: Environment, first: Requests, work_dir: Path, names: list | None = None
) -> tuple[list[Agent], dict[str, str]]:
    """The agents of ``names`` (default ``cfg.agents``), in that order: a name is built from
    ``AGENT_FACTORIES`` or ``cfg.deep``, an object following the ``Agent`` protocol is used as it is.
    Returns the agents and the skipped ones with the reason ("vw" when ``vowpalwabbit`` does not import).
    The deep agents share one featurizer (vocabularies, features)."""
    featurizer = None
    agents: list[Agent] = []
    skipped: dict[str, str] = {}
    for k, name in enumerate(cfg.agents if names is None else names):
        seed = cfg.seed * 101 + k
        if not isinstance(name, str):
            agents.append(name)
            continue
        if name.startswith("deep_"):
            featurizer = featurizer or Featurizer(env, first, cfg.deep.max_history)
            agent = DeepAgent(name, featurizer, cfg.deep, seed, work_dir / "exports")
        else:
            agent = AGENT_FACTORIES[name](AgentContext(cfg, env, first, seed, work_dir))
        if agent is None:
            skipped[name] = "vowpalwabbit is not installed" if name == "vw" else "its factory returned None"
        else:
            agents.append(agent)
    return agents, skipped


def check_agents(agents: list) -> None:
    """Refuse a list of agents (names or objects) that the loop cannot run, before the first round:
    each object must follow the ``Agent`` protocol, names must be distinct."""
    names = []
    for k, agent in enumerate(agents):
        if isinstance(agent, str):
            names.append(agent)
            continue
        missing = [m for m in ("act", "learn") if not callable(getattr(agent, m, None))]
        name = getattr(agent, "name", None)
        if missing or not isinstance(name, str) or not name:
            raise ConfigError(
                f"run_loop agents[{k}] ({type(agent).__name__}) does not follow the Agent protocol: it needs "
                "a non-empty str `name` and methods act(requests, rng) -> Decisions and "
                "learn(requests, decisions, rewards) (deepbandit.loop.agents.Agent)"
            )
        names.append(name)
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated or not names:
        raise ConfigError(f"run_loop: agents must be distinct and at least one, got {names}")


def check_decisions(agent: str, d: Decisions, requests: Requests, round_index: int) -> None:
    """An agent's decisions must be what the log contract records: an action at a valid candidate, a
    distribution over the row's valid candidates that sums to 1, and the propensity of the action in it.
    A user's agent that breaks this gets one line naming the round, the request and what is wrong."""
    b, a = requests.mask.shape
    where = f"agent {agent}: round {round_index + 1}"
    fields = {"action": (b,), "propensity": (b,), "action_dist": (b, a)}
    got = {name: np.asarray(getattr(d, name, None)) for name in fields}
    for name, shape in fields.items():
        if got[name].shape != shape or got[name].dtype.kind not in "iuf":
            raise DataError(
                f"{where}: decisions.{name} must be a numeric array of shape {shape}, got "
                f"{got[name].dtype} {got[name].shape}"
            )
    action, propensity, dist = got["action"], got["propensity"], got["action_dist"]

    def refuse(bad: np.ndarray, what) -> None:
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{where}, request {row}: {what(row)} ({int(bad.sum())} such rows)")

    refuse((action < 0) | (action >= a) | (action != np.round(action)),
           lambda i: f"action {action[i]} is not a candidate position in [0, {a})")  # fmt: skip
    rows, action = np.arange(b), action.astype(np.int64)
    refuse(~requests.mask[rows, action], lambda i: f"action {action[i]} points at padding")
    refuse(~np.isfinite(dist).all(axis=1) | (dist < 0).any(axis=1) | (dist * ~requests.mask).any(axis=1),
           lambda i: f"action_dist {dist[i].tolist()} is not a distribution over the valid candidates")  # fmt: skip
    total = dist.sum(axis=1)
    refuse(np.abs(total - 1) > 1e-6, lambda i: f"action_dist sums to {total[i]!r}, not 1")
    refuse(~((propensity > 0) & (np.abs(propensity - dist[rows, action]) <= 1e-9)),
           lambda i: f"propensity {propensity[i]!r} is not action_dist at the action ({dist[i, action[i]]!r})")  # fmt: skip


def run_loop(
    cfg: LoopConfig,
    env: Environment | None = None,
    out_dir: str | Path | None = None,
    agents: list[str | Agent] | None = None,
) -> dict:
    """Run the loop; write ``loop.json`` (+ plots, + logs) to ``out_dir`` and return the same dict.

    ``env``: a user's environment (the ``Environment`` protocol) instead of ``cfg.environment``.
    ``agents``: instead of ``cfg.agents``, a list of built-in names and a user's agent objects (the
    ``Agent`` protocol of ``deepbandit.loop.agents``), decided in that order on the same requests.

    Per agent (R rounds): ``regret`` (R,) per round (sum over requests), ``cumulative_regret`` (R,),
    ``take_rate`` (R,) mean sampled reward, ``expected_take_rate`` (R,) mean expected reward of the chosen
    images; per round ``oracle`` (R,) and ``random`` (R,) expected take rates.
    """
    cfg.validate(own_environment=env is not None, own_agents=agents is not None)
    if agents is not None:
        check_agents(agents)
        for name in agents:
            if isinstance(name, str):
                LoopConfig(agents=[name], deep=cfg.deep).validate(own_environment=True)
    out = Path(out_dir if out_dir is not None else cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = env if env is not None else make_environment(cfg)
    low, high = getattr(env, "reward_range", (0.0, 1.0))
    if not 0.0 <= low <= high <= 1.0:
        raise ConfigError(
            f"environment {getattr(env, 'name', type(env).__name__)}: reward_range ({low}, {high}) is not inside "
            "[0, 1], which the deep agents' cross-entropy and the log contract need; scale its rewards"
        )
    env.reset(cfg.seed)
    t0 = time.perf_counter()
    requests = env.next_requests(cfg.requests_per_round)
    agents, skipped = make_agents(cfg, env, requests, out, agents)
    for name, reason in skipped.items():
        log.warning("agent %r skipped: %s", name, reason)
    names = [a.name for a in agents]
    if len(set(names)) != len(names):
        raise ConfigError(f"run_loop: agent names must be distinct, got {names}")
    stats = {n: {k: [] for k in ("regret", "take_rate", "expected_take_rate")} for n in names}
    oracle, random_value, seconds = [], [], dict.fromkeys(names, 0.0)
    logs: dict[str, list[pa.Table]] = {n: [] for n in names}
    from rich.progress import Progress

    # a bar on a terminal; elsewhere (a pipe, CI, a notebook) one log line per round
    lines = cfg.progress and not sys.stderr.isatty()
    with Progress(disable=not cfg.progress or lines, transient=True) as progress:
        task = progress.add_task("loop", total=cfg.n_rounds)
        for r in range(cfg.n_rounds):
            if r:
                requests = env.next_requests(cfg.requests_per_round)
            q = env.expected_rewards(requests)
            best = np.where(requests.mask, q, -np.inf).max(axis=1)
            oracle.append(float(best.mean()))
            random_value.append(float((q.sum(axis=1) / requests.mask.sum(axis=1)).mean()))
            rows = np.arange(len(requests))
            for k, agent in enumerate(agents):
                t = time.perf_counter()
                rng = np.random.default_rng([cfg.seed, 0xA6E7, k, r])
                d = agent.act(requests, rng)
                check_decisions(agent.name, d, requests, r)
                rewards = env.sample_rewards(requests, d.action)
                check_rewards(env, rewards, agent.name, r)
                agent.learn(requests, d, rewards)
                seconds[agent.name] += time.perf_counter() - t
                chosen_q = q[rows, d.action]
                s = stats[agent.name]
                s["regret"].append(float((best - chosen_q).sum()))
                s["take_rate"].append(float(rewards.mean()))
                s["expected_take_rate"].append(float(chosen_q.mean()))
                if cfg.keep_logs:
                    logs[agent.name].append(impressions_table(requests, d, rewards))
            progress.advance(task)
            if lines:
                regret = ", ".join(f"{n} {sum(stats[n]['regret']):.1f}" for n in names)
                log.info(
                    "round %d/%d: %d requests, %.0f s; cumulative regret: %s",
                    r + 1, cfg.n_rounds, (r + 1) * cfg.requests_per_round, time.perf_counter() - t0, regret,
                )  # fmt: skip
    result = {
        "environment": getattr(env, "name", type(env).__name__),
        "n_rounds": cfg.n_rounds,
        "requests_per_round": cfg.requests_per_round,
        "oracle": oracle,
        "random": random_value,
        "agents": {},
        "seconds": {"total": time.perf_counter() - t0, "per_agent": seconds},
        "config": asdict(cfg),
        "ran": what_ran(env, agents, skipped),
        "out_dir": str(out),
    }
    for agent in agents:
        s = stats[agent.name]
        entry = {**s, "cumulative_regret": np.cumsum(s["regret"]).tolist()}
        entry["total_regret"] = entry["cumulative_regret"][-1]
        entry["mean_expected_take_rate"] = float(np.mean(s["expected_take_rate"]))
        # the uniform policy's expected regret is 100 (the Wheel's convention, Riquelme et al. 2018)
        uniform = sum((o - u) * cfg.requests_per_round for o, u in zip(oracle, random_value, strict=True))
        entry["normalized_regret"] = 100.0 * entry["total_regret"] / uniform if uniform > 0 else None
        entry["decisions_per_s"] = cfg.n_rounds * cfg.requests_per_round / max(seconds[agent.name], 1e-9)
        if isinstance(agent, DeepAgent):
            entry["train_seconds"], entry["export_seconds"] = agent.train_seconds, agent.export_seconds
            entry["exports"], entry["refreshes"] = agent.exports, agent.refreshes
        result["agents"][agent.name] = entry
    if cfg.keep_logs:
        from deepbandit.data.io import write_parquet_atomic

        for name, tables in logs.items():
            write_parquet_atomic(pa.concat_tables(tables), out / "logs" / f"{name}.parquet")
    result["logs"] = {n: pa.concat_tables(t) for n, t in logs.items()} if cfg.keep_logs else {}
    if cfg.plots:
        plot_loop(result, out)
    payload = {k: v for k, v in result.items() if k != "logs"}
    write_text_atomic(out / "loop.json", json.dumps(payload, indent=2) + "\n")
    return result


def describe(obj: Any) -> dict:
    """What an object is, for loop.json: its class and, when it has one, its own ``describe()`` dict."""
    entry = {"class": f"{type(obj).__module__}.{type(obj).__qualname__}"}
    own = getattr(obj, "describe", None)
    if callable(own):
        entry.update(own())
    return entry


def what_ran(env: Environment, agents: list[Agent], skipped: dict[str, str]) -> dict:
    """The environment and agents that actually ran (classes and resolved settings), those skipped and
    why, and the versions of the packages involved."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("deepbandit", "numpy", "torch", "onnxruntime", "vowpalwabbit"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "environment": {"name": getattr(env, "name", type(env).__name__), **describe(env)},
        "agents": {a.name: describe(a) for a in agents},
        "skipped": skipped,
        "versions": {"python": platform.python_version(), **versions},
    }


def plot_loop(result: dict, out: Path) -> list[Path]:
    """cumulative_regret.png and take_rate.png in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = result["requests_per_round"]
    x = np.arange(1, result["n_rounds"] + 1) * n
    paths = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, a in result["agents"].items():
        ax.plot(x, a["cumulative_regret"], marker="o", ms=3, label=name)
    ax.set(
        title=f"Cumulative regret vs oracle ({result['environment']})",
        xlabel="requests",
        ylabel="cumulative expected regret",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(out / "cumulative_regret.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(x, result["oracle"], "k--", label="oracle")
    for name, a in result["agents"].items():
        ax.plot(x, a["expected_take_rate"], marker="o", ms=3, label=name)
    ax.set(
        title=f"Take fraction per round ({result['environment']}; expected reward of the shown image)",
        xlabel="requests",
        ylabel="take fraction",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(out / "take_rate.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def summary_table(result: dict):
    """A rich table: total regret, mean expected take rate, last-round take rate, seconds per agent."""
    from rich.table import Table

    table = Table(
        title=f"closed loop on {result['environment']}: {result['n_rounds']} rounds x "
        f"{result['requests_per_round']} requests (oracle {np.mean(result['oracle']):.4f})"
    )
    for col in ("agent", "total regret", "take (expected)", "last round", "seconds"):
        table.add_column(col, justify="left" if col == "agent" else "right")
    for name, a in sorted(result["agents"].items(), key=lambda kv: kv[1]["total_regret"]):
        table.add_row(
            name,
            f"{a['total_regret']:.1f}",
            f"{a['mean_expected_take_rate']:.4f}",
            f"{a['expected_take_rate'][-1]:.4f}",
            f"{result['seconds']['per_agent'][name]:.1f}",
        )
    return table
