"""Serving throughput and latency: onnxruntime vs torch eager on the same model, CPU and (when present) GPU.

    python scripts/bench_serving.py                         # CPU, writes benchmarks/serving.json
    python scripts/bench_serving.py --sizes 1 64 4096 --seconds 0.5

For each batch size (1 .. 16384, 25 candidates, history 32) it times:
  - model:    the graph alone on prebuilt inputs: onnxruntime session.run of model.onnx (``onnxruntime``)
              and of model_precomputed.onnx (the image tower's outputs stored; ``onnxruntime_precomputed``),
              torch eager under no_grad; on GPU, onnxruntime with IO binding from host arrays, and torch
              with inputs already on the device plus the copy of the scores back (what a serving loop pays);
  - decide:   ArtworkService.decide end to end on an Arrow table of raw requests (parsing, vocabulary
              lookups, features, onnxruntime on the precomputed graph, greedy policy), onnxruntime only
              (serving has no torch).
Each (backend, size) runs for ``--seconds`` (at least 3 calls) after 1 warm-up call; latency is per batch
call: p50/p99 over calls; requests/s = batch / mean call time; scores/s = requests/s * 25; CPU-seconds per
call are the process's, with one onnxruntime and torch thread on a CPU (``--threads``), so that the ratios
below count work, not threads spinning while a neighbour holds a core. Ratios per batch size, CPU:
``decide_over_session_run`` (decide / the session.run it calls), ``precomputed_over_embedding_graph``
(model cost with the tower stored / without), ``requests_per_s_per_core`` (decide, per CPU-second).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine

from deepbandit.data.vocab import FeatureVocabs, Vocab
from deepbandit.export.graph import ExportModule, input_names, sample_inputs
from deepbandit.export.onnx_export import export_bundle
from deepbandit.models.bundle import ModelBundle
from deepbandit.models.encoders import ModelConfig
from deepbandit.models.uncertainty import UncertaintyConfig, build_scorer

N_CANDIDATES, HISTORY = 25, 32


def make_bundle(n_titles=20_000, n_images=100_000, dim=64) -> ModelBundle:
    """A default-sized scorer (ModelConfig defaults: id 32, tower 64, hidden 128, head 128), random weights."""
    torch.manual_seed(0)
    vocabs = FeatureVocabs(
        title=Vocab("title", np.arange(n_titles)),
        image=Vocab("image", np.arange(n_images)),
        country=Vocab("country", [f"C{i:03d}" for i in range(190)]),
        language=Vocab("language", [f"L{i:02d}" for i in range(40)]),
        device=Vocab("device", ["android", "ios", "tv", "web"]),
        genre=Vocab("genre", [f"g{i:02d}" for i in range(30)]),
    )
    cfg = ModelConfig(
        n_titles=n_titles, n_countries=190, n_languages=40, n_devices=4, n_images=n_images, n_genres=30,
        embedding_dim=dim, image_id_hash_buckets=1 << 16,
    )  # fmt: skip
    unc = UncertaintyConfig(kind="none")
    genres = (torch.rand(n_titles + 2, 30) < 0.1).float()
    model = build_scorer(cfg, unc, genres)
    emb = torch.randn(n_images + 2, dim)
    return ModelBundle.from_model(model, cfg, unc, vocabs, emb, genres, {"max_history": HISTORY})


def timed(fn, batch: int, seconds: float) -> dict:
    fn()  # warm-up (allocations, kernel selection)
    times = []
    start, cpu0 = time.perf_counter(), time.process_time()
    while len(times) < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    cpu_per_call = (time.process_time() - cpu0) / len(times)
    t = np.array(times)
    rps = batch / t.mean()
    return {
        "batch": batch,
        "calls": len(t),
        "cpu_ms_per_call": cpu_per_call * 1e3,
        "requests_per_cpu_s": batch / cpu_per_call,
        "requests_per_s": rps,
        "scores_per_s": rps * N_CANDIDATES,
        "p50_ms": float(np.percentile(t, 50) * 1e3),
        "p99_ms": float(np.percentile(t, 99) * 1e3),
    }


def request_table(bundle: ModelBundle, batch: int, seed: int = 0):
    """Raw requests as an Arrow table with the impression contract's context columns."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    n_images = len(bundle.vocabs.image.keys)
    stride = n_images // N_CANDIDATES  # unique, known candidates: a random start plus a fixed stride
    images = rng.integers(0, stride, (batch, 1)) + np.arange(N_CANDIDATES) * stride
    cand = pa.ListArray.from_arrays(
        pa.array(np.arange(batch + 1, dtype=np.int32) * N_CANDIDATES), images.ravel()
    )
    n_played = rng.integers(0, HISTORY + 1, batch)
    off = np.concatenate([[0], np.cumsum(n_played)]).astype(np.int32)
    played = pa.ListArray.from_arrays(pa.array(off), rng.integers(0, 20_000, off[-1]))
    return pa.table(
        {
            "member_id": rng.integers(0, 10**9, batch),
            "title_id": rng.integers(0, 20_000, batch),
            "candidate_image_ids": cand,
            "played_title_ids": played,
            "country": pa.array(np.array([f"C{i:03d}" for i in range(190)])[rng.integers(0, 190, batch)]),
            "language": pa.array(np.array([f"L{i:02d}" for i in range(40)])[rng.integers(0, 40, batch)]),
            "device": pa.array(np.array(["android", "ios", "tv", "web"])[rng.integers(0, 4, batch)]),
            "hour": pa.array(rng.integers(0, 24, batch), pa.int8()),
            "weekday": pa.array(rng.integers(0, 7, batch), pa.int8()),
            "recommender_score": pa.array(rng.normal(size=batch), pa.float32()),
            "prior_interaction": pa.array(rng.random(batch) < 0.3),
        }
    )


def _machine() -> dict:
    import onnxruntime as ort

    return machine(onnxruntime=ort.__version__, onnxruntime_providers=ort.get_available_providers())


def bench_device(
    bundle, export_dir: Path, device: str, sizes: list[int], seconds: float, threads: int
) -> dict:
    from deepbandit.serving import ArtworkService
    from deepbandit.serving.session import OnnxSession

    names = input_names(bundle)
    tower_names = input_names(bundle, precomputed=True)
    providers = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    )
    threads = threads if device == "cpu" else 0
    if threads:
        torch.set_num_threads(threads)
    session = OnnxSession(export_dir / "model.onnx", providers, threads)
    tower = OnnxSession(export_dir / "model_precomputed.onnx", providers, threads)
    if device == "cuda" and not session.cuda:
        raise RuntimeError(f"onnxruntime could not start CUDA (providers: {session.providers})")
    model = ExportModule(bundle.build_model().to(device), names, posterior=False).eval()
    service = ArtworkService.from_dir(export_dir, providers=providers, intra_op_threads=threads)
    rows: dict[str, list[dict]] = {"onnxruntime": [], "onnxruntime_precomputed": [], "torch_eager": [],
                                   "onnxruntime_decide": []}  # fmt: skip
    for b in sizes:
        feeds = sample_inputs(bundle, b, N_CANDIDATES, HISTORY, seed=b)
        tensors = [torch.from_numpy(feeds[n]).to(device) for n in names]
        rows["onnxruntime"].append(timed(lambda feeds=feeds: session.run(feeds, ["scores"]), b, seconds))
        tower_feeds = {n: feeds[n] for n in tower_names}
        rows["onnxruntime_precomputed"].append(
            timed(lambda feeds=tower_feeds: tower.run(feeds, ["scores"]), b, seconds)
        )

        def torch_call(tensors=tensors):
            with torch.inference_mode():
                model(*tensors)[0].cpu()

        rows["torch_eager"].append(timed(torch_call, b, seconds))
        table = request_table(bundle, b, seed=b)
        rng = np.random.default_rng(0)
        rows["onnxruntime_decide"].append(timed(lambda t=table, g=rng: service.decide(t, rng=g), b, seconds))
        print(
            device,
            b,
            {k: f"{v[-1]['requests_per_s']:.3g} req/s p99 {v[-1]['p99_ms']:.2f} ms" for k, v in rows.items()},
        )
    return rows


def ratios(rows: dict[str, list[dict]]) -> dict:
    """Per batch size, from CPU-seconds per call measured in this run."""
    out: dict = {
        "decide_over_session_run": {},
        "precomputed_over_embedding_graph": {},
        "requests_per_s_per_core": {},
    }
    for decide, run, plain in zip(rows["onnxruntime_decide"], rows["onnxruntime_precomputed"], rows["onnxruntime"],
                                  strict=True):  # fmt: skip
        b = str(decide["batch"])
        out["decide_over_session_run"][b] = decide["cpu_ms_per_call"] / run["cpu_ms_per_call"]
        out["precomputed_over_embedding_graph"][b] = run["cpu_ms_per_call"] / plain["cpu_ms_per_call"]
        out["requests_per_s_per_core"][b] = decide["requests_per_cpu_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024, 4096, 16384])
    parser.add_argument("--seconds", type=float, default=0.6, help="time per (backend, batch size)")
    parser.add_argument("--out", default="benchmarks/serving.json")
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=1, help="onnxruntime/torch threads on a CPU (0: default)"
    )
    args = parser.parse_args()
    bundle = make_bundle()
    result: dict = {
        "machine": _machine(),
        "n_candidates": N_CANDIDATES,
        "history": HISTORY,
        "model_config": {},
    }
    result["model_config"] = {k: v for k, v in vars(bundle.model_cfg).items()}
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = Path(tmp)
        export_bundle(bundle, export_dir, triton=False, parity_batch_sizes=(7,), parity_candidates=(25,))
        result["cpu"] = bench_device(bundle, export_dir, "cpu", args.sizes, args.seconds, args.threads)
        result["cpu_ratios"] = ratios(result["cpu"])
        print(json.dumps(result["cpu_ratios"], indent=1))
        if not args.no_gpu and torch.cuda.is_available():
            result["gpu"] = bench_device(bundle, export_dir, "cuda", args.sizes, args.seconds, 0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
