"""Throughput of the off-policy estimators: value alone, and value + bootstrap interval, on 10M logged rows.

Two paths in the same run, on the same arrays:
  numpy  a reference written the way the formulas read (one vectorised expression per estimator), with the
         same chunked Poisson bootstrap (16-bit lookup table, per-chunk draws) written in numpy;
  torch  deepbandit.evaluation.estimators (input checks included), on CPU, and on the GPU when there is one
         (numpy arrays streamed chunk by chunk, and tensors already on the GPU, float64 and float32).

Writes benchmarks/evaluation.json with the machine's description. Usage:
    python scripts/bench_evaluation.py [--rows 10000000] [--candidates 25] [--n-bootstrap 100]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine import machine
from tqdm.auto import tqdm

from deepbandit.evaluation.estimators import (
    DM,
    DR,
    IPS,
    SNDR,
    SNIPS,
    OffPolicyEstimator,
    Replay,
    SwitchDR,
    estimate_all,
)
from deepbandit.evaluation.intervals import poisson_table

ESTIMATORS: list[OffPolicyEstimator] = [
    IPS(),
    SNIPS(),
    DM(),
    DR(),
    SNDR(),
    SwitchDR(tau=10.0),
    Replay(),
]


def make_logs(n: int, a: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform logging over ``a`` candidates, a softmax target (one-hot for Replay), a noisy reward model."""
    rng = np.random.default_rng(seed)
    q = rng.random((n, a))  # true expected reward; in-place steps keep the peak at four (n, a) arrays
    target = rng.normal(0.0, 0.3, (n, a))
    target += q
    target *= 3.0
    np.exp(target, out=target)
    target /= target.sum(axis=1, keepdims=True)
    greedy = np.zeros((n, a))
    greedy[np.arange(n), target.argmax(axis=1)] = 1.0
    model = rng.normal(0.0, 0.05, (n, a))
    model += q
    np.clip(model, 0.0, 1.0, out=model)
    action = rng.integers(0, a, n)
    reward = (rng.random(n) < q[np.arange(n), action]).astype(np.float64)
    return dict(
        reward=reward,
        action=action,
        pscore=np.full(n, 1.0 / a),
        action_dist=target,
        greedy_dist=greedy,
        estimated_rewards=model,
    )


def numpy_terms(name: str, logs: dict[str, np.ndarray]) -> tuple[float, np.ndarray]:
    """Textbook value and per-row terms (n, 3) of V = mean(c) + sum(a) / sum(b), in numpy."""
    r, act, p = logs["reward"], logs["action"], logs["pscore"]
    pi = logs["greedy_dist"] if name == "replay" else logs["action_dist"]
    rows = np.arange(len(r))
    w = pi[rows, act] / p
    zero, one = np.zeros_like(r), np.ones_like(r)
    if name == "ips":
        c = w * r
        return float(np.mean(c)), np.stack([c, zero, one], axis=1)
    if name in ("snips", "replay"):
        return float(np.sum(w * r) / np.sum(w)), np.stack([zero, w * r, w], axis=1)
    q = logs["estimated_rewards"]
    q_pi, q_a = np.einsum("ij,ij->i", pi, q), q[rows, act]
    if name == "dm":
        return float(np.mean(q_pi)), np.stack([q_pi, zero, one], axis=1)
    if name == "sndr":
        a = w * (r - q_a)
        return float(np.mean(q_pi) + np.sum(a) / np.sum(w)), np.stack([q_pi, a, w], axis=1)
    kept = w if name == "dr" else np.where(w <= 10.0, w, 0.0)  # switch_dr(tau=10)
    c = q_pi + kept * (r - q_a)
    return float(np.mean(c)), np.stack([c, zero, one], axis=1)


def numpy_bootstrap(
    terms: np.ndarray, n_bootstrap: int, seed: int, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile interval from a chunked Poisson bootstrap over the per-row terms (n, 3)."""
    rng = np.random.default_rng(seed)
    table = poisson_table(torch.device("cpu"), torch.float64).numpy()
    x1 = np.concatenate([np.ones((len(terms), 1)), terms], axis=1)
    totals = np.zeros((n_bootstrap, 4))
    step = max(1, 2**16 // n_bootstrap)
    for start in range(0, len(terms), step):
        block = x1[start : start + step]
        counts = table[rng.integers(0, 2**16, (n_bootstrap, len(block)), dtype=np.uint16)]
        totals += counts @ block
    values = totals[:, 1] / totals[:, 0] + totals[:, 2] / totals[:, 3]
    lower, upper = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lower), float(upper)


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_torch(
    logs: dict[str, np.ndarray], n_bootstrap: int, label: str, **options: object
) -> dict[str, dict[str, float]]:
    """Value and value + bootstrap timings of every estimator through deepbandit (``options``: device,
    dtype, and ``preload`` to move the arrays to the device before timing)."""
    preload = options.pop("preload", False)
    out = {}
    for est in tqdm(ESTIMATORS, desc=label, leave=False):
        arrays = logs_for(logs, est, preload, options)
        # Warm up (CUDA context, kernels, allocator) on a slice so the timings measure steady state.
        est.estimate_interval(
            **{k: v[:10_000] for k, v in arrays.items()}, n_bootstrap=n_bootstrap, **options
        )
        value, t_value = timed(lambda est=est, arrays=arrays: est.estimate_policy_value(**arrays, **options))
        interval, t_boot = timed(
            lambda est=est, arrays=arrays: est.estimate_interval(**arrays, n_bootstrap=n_bootstrap, **options)
        )
        n = len(logs["reward"])
        out[est.name] = dict(
            value=value,
            lower=interval["lower"],
            upper=interval["upper"],
            value_seconds=t_value,
            value_rows_per_s=n / t_value,
            value_bootstrap_seconds=t_boot,
            value_bootstrap_rows_per_s=n / t_boot,
        )
    return out


def logs_for(
    logs: dict[str, np.ndarray], est: OffPolicyEstimator, preload: bool, options: dict
) -> dict[str, object]:
    """The estimator's arrays: numpy, or (``preload``) tensors already on ``options['device']``."""
    arrays = {k: logs[k] for k in ("reward", "action", "pscore")}
    arrays["action_dist"] = logs["greedy_dist"] if isinstance(est, Replay) else logs["action_dist"]
    if est.needs_reward_model:
        arrays["estimated_rewards"] = logs["estimated_rewards"]
    if preload:
        dtype = options.get("dtype", torch.float64)
        arrays = {
            k: torch.from_numpy(v).to(options["device"], dtype=dtype if v.dtype.kind == "f" else None)
            for k, v in arrays.items()
        }
    return arrays


def bench_numpy(logs: dict[str, np.ndarray], n_bootstrap: int) -> dict[str, dict[str, float]]:
    out = {}
    n = len(logs["reward"])
    for est in tqdm(ESTIMATORS, desc="numpy", leave=False):
        (value, _), t_value = timed(lambda est=est: numpy_terms(est.name, logs))

        def with_interval(est: OffPolicyEstimator = est) -> tuple[float, tuple[float, float]]:
            v, terms = numpy_terms(est.name, logs)
            return v, numpy_bootstrap(terms, n_bootstrap, seed=0)

        (_, (lower, upper)), t_boot = timed(with_interval)
        out[est.name] = dict(
            value=value,
            lower=lower,
            upper=upper,
            value_seconds=t_value,
            value_rows_per_s=n / t_value,
            value_bootstrap_seconds=t_boot,
            value_bootstrap_rows_per_s=n / t_boot,
        )
    return out


VALUE_SET = ("ips", "snips", "dr")  # the value-only comparison: the estimators a quick report needs


def cpu_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Least process CPU time of ``repeats`` calls: on a shared machine the figure that holds."""
    best = math.inf
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def bench_value_over_numpy(logs: dict[str, np.ndarray], repeats: int) -> dict[str, object]:
    """Values only (no interval, no standard error) through deepbandit, input checks included, against the
    numpy reference on the same arrays: CPU-seconds of each, and numpy's over ours (>= 1: we are faster).
    Each estimator alone, and IPS + SNIPS + DR together (one pass for ours, three expressions for numpy)."""
    by_name = {e.name: e for e in ESTIMATORS}
    out: dict[str, object] = {}
    for names in [(n,) for n in VALUE_SET] + [VALUE_SET]:
        estimators = [by_name[n] for n in names]
        # the arrays the set needs (DR's reward model only where DR is in it)
        arrays = logs_for(logs, by_name["dr"] if "dr" in names else estimators[0], False, {})
        ours = cpu_seconds(lambda e=estimators, a=arrays: estimate_all(e, **a, standard_error=False), repeats)
        plain = cpu_seconds(lambda ns=names: [numpy_terms(n, logs)[0] for n in ns], repeats)
        out["+".join(names)] = dict(
            numpy_cpu_seconds=plain, ours_cpu_seconds=ours, value_over_numpy=plain / ours
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--candidates", type=int, default=25)
    parser.add_argument("--n-bootstrap", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/evaluation.json"))
    parser.add_argument(
        "--value-only",
        action="store_true",
        help="only the value-only comparison (value_over_numpy, CPU-seconds, torch on 1 thread), merged "
        "into --out beside the earlier results",
    )
    parser.add_argument("--repeats", type=int, default=3, help="--value-only: repeats (least CPU time kept)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.value_only:
        torch.set_num_threads(1)  # numpy's reference runs on one core: CPU-seconds compare like with like
        logs, t_gen = timed(lambda: make_logs(args.rows, args.candidates))
        ratios = bench_value_over_numpy(logs, args.repeats)
        report = json.loads(args.out.read_text()) if args.out.exists() else {"machine": machine()}
        report["value_over_numpy"] = dict(
            machine=machine(),
            rows=args.rows,
            candidates=args.candidates,
            repeats=args.repeats,
            results=ratios,
        )
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, args.out)
        for name, r in ratios.items():
            print(f"{name:<16} numpy {r['numpy_cpu_seconds']:.3f} s  ours {r['ours_cpu_seconds']:.3f} s  "
                  f"value_over_numpy {r['value_over_numpy']:.2f}")  # fmt: skip
        return

    (logs, t_gen) = timed(lambda: make_logs(args.rows, args.candidates))
    print(f"generated {args.rows:,} rows x {args.candidates} candidates in {t_gen:.1f} s")
    results: dict[str, object] = {"numpy": bench_numpy(logs, args.n_bootstrap)}
    results["torch_cpu_float64"] = bench_torch(logs, args.n_bootstrap, "torch cpu", device="cpu")
    if torch.cuda.is_available():
        results["torch_cuda_float64_streamed"] = bench_torch(
            logs, args.n_bootstrap, "cuda streamed", device="cuda"
        )
        results["torch_cuda_float64_resident"] = bench_torch(
            logs, args.n_bootstrap, "cuda resident", device="cuda", preload=True
        )
        results["torch_cuda_float32_resident"] = bench_torch(
            logs, args.n_bootstrap, "cuda float32", device="cuda", dtype=torch.float32, preload=True
        )
    # The same arrays through both paths: the values must agree (float64) to rounding.
    agreement = {
        name: abs(results["torch_cpu_float64"][name]["value"] - r["value"]) / max(abs(r["value"]), 1e-300)
        for name, r in results["numpy"].items()
    }
    report = dict(
        machine=machine(),
        rows=args.rows,
        candidates=args.candidates,
        n_bootstrap=args.n_bootstrap,
        generate_seconds=t_gen,
        relative_difference_torch_vs_numpy=agreement,
        results=results,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.out)

    print(f"{'estimator':<16}" + "".join(f"{k:>30}" for k in results))
    print(f"{'':<16}" + "".join(f"{'value / +bootstrap (Mrows/s)':>30}" for _ in results))
    for name in results["numpy"]:
        cells = [
            f"{r[name]['value_rows_per_s'] / 1e6:.2f} / {r[name]['value_bootstrap_rows_per_s'] / 1e6:.2f}"
            for r in results.values()
        ]
        print(f"{name:<16}" + "".join(f"{c:>30}" for c in cells))
    print(f"max relative difference torch vs numpy: {max(agreement.values()):.2e}; wrote {args.out}")


if __name__ == "__main__":
    main()
