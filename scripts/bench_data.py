"""Data-path benchmark: simulator rows/s, Parquet read-to-tensor rows/s and peak memory, in one run.

For each size (default 1M and 10M impressions) it measures, each phase in a fresh child process so peak
memory is that phase's own:

* simulate: ``deepbandit.sim.simulator.simulate`` writing the dataset (rows/s, peak RSS);
* on the simulated log and on a fixed-shape log (25 candidates, 20 plays per row: the issue's target
  shape), written with ``write_impressions``: Arrow decode alone, then decode + ``table_to_batch`` through
  ``ImpressionStream`` (one process; with and without ``tune_allocator``), then a 2-worker DataLoader;
* once, on a 20,000-row subset, our conversion against the plain paths (``to_pylist`` + Python padding,
  ``to_pandas`` + Python padding) producing the same tensors.

Peak memory: ``peak_rss_delta_mb`` is the growth of the process's peak resident set (VmHWM, reset after
setup) over its resident set when streaming starts, i.e. what streaming adds beyond the interpreter,
libraries and vocabularies (memory the allocators kept from setup is reused, so it can read low);
``peak_rss_mb`` is the whole process's peak. Bounded memory shows as the same figures at 1M and 10M rows.

Usage: python scripts/bench_data.py [--sizes 1000000 10000000] [--out benchmarks/data.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from machine import machine

BATCH_ROWS = 65_536
MAX_HISTORY = 20
PLAIN_ROWS = 20_000


# --- memory ----------------------------------------------------------------------------------------------


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class PeakRSS:
    """Peak resident memory growth over a block: VmHWM reset on entry (Linux clear_refs), else ru_maxrss."""

    def __enter__(self) -> PeakRSS:
        self.start_kb = _status_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.reset = True
        except OSError:
            self.reset = False  # then the peak may include earlier setup: reported as such
        return self

    def __exit__(self, *exc) -> None:
        peak_kb = _status_kb("VmHWM") if self.reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.delta_mb = (peak_kb - self.start_kb) / 1024
        self.peak_mb = peak_kb / 1024


# --- data --------------------------------------------------------------------------------------------------


def write_fixed_shape(
    root: Path, n: int, *, n_candidates: int = 25, n_history: int = 20, chunk: int = 1_000_000
):
    """n impressions with exactly ``n_candidates`` unique candidates and ``n_history`` plays per row,
    written in 1M-row parts (bounded memory). Ids are contiguous ranges, like the simulator's."""
    from deepbandit.data.io import write_impressions
    from deepbandit.data.schema import IMPRESSIONS_SCHEMA

    n_images, n_titles, start_s = 200_000, 20_000, 1_767_225_600
    for k, r0 in enumerate(range(0, n, chunk)):
        m = min(chunk, n - r0)
        rng = np.random.default_rng([7, k])
        # unique candidates per row: a random first image and a fixed stride (coprime with n_images)
        first = rng.integers(0, n_images, m)
        cand = (first[:, None] + np.arange(n_candidates) * 7_919) % n_images
        chosen = cand[np.arange(m), rng.integers(0, n_candidates, m)]
        offsets = pa.array(np.arange(m + 1, dtype=np.int32) * n_candidates)
        h_offsets = pa.array(np.arange(m + 1, dtype=np.int32) * n_history)
        ts = (start_s + 86_400 * 7 * (r0 + np.arange(m)) // n) * 1_000_000
        strings = pa.array(["US", "GB", "DE", "FR", "BR", "JP", "IN", "MX"])
        table = pa.table(
            {
                "request_id": pc.binary_join_element_wise(
                    "fx-", pc.cast(pa.array(np.arange(r0, r0 + m)), pa.string()), ""
                ),
                "timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
                "member_id": pa.array(rng.integers(0, 1_000_000, m)),
                "title_id": pa.array(rng.integers(0, n_titles, m)),
                "candidate_image_ids": pa.ListArray.from_arrays(offsets, pa.array(cand.ravel())),
                "chosen_image_id": pa.array(chosen),
                "propensity": pa.array(np.full(m, 1 / n_candidates)),
                "reward": pa.array(rng.random(m) < 0.15, pa.float64()),
                "played_title_ids": pa.ListArray.from_arrays(
                    h_offsets, pa.array(rng.integers(0, n_titles, m * n_history))
                ),
                "country": strings.take(pa.array(rng.integers(0, 8, m))),
                "language": strings.take(pa.array(rng.integers(0, 8, m))),
                "device": strings.take(pa.array(rng.integers(0, 4, m))),
                "hour": pa.array(rng.integers(0, 24, m).astype(np.int8)),
                "weekday": pa.array(rng.integers(0, 7, m).astype(np.int8)),
                "recommender_score": pa.array(rng.random(m).astype(np.float32)),
                "prior_interaction": pa.array(rng.random(m) < 0.3),
            },
            schema=IMPRESSIONS_SCHEMA,
        )
        write_impressions(table, root, part_name=f"part-{k:05d}.parquet")


def dataset_stats(root: Path) -> dict:
    import pyarrow.parquet as pq

    from deepbandit.data.io import list_parquet_files, open_impressions

    files = list_parquet_files(root)
    lengths = {"candidate_image_ids": [], "played_title_ids": []}
    for batch in open_impressions(root, columns=list(lengths), batch_rows=1 << 20).to_batches():
        for name in lengths:
            lengths[name].append(pc.list_value_length(batch.column(name)).to_numpy())
    cand, hist = (np.concatenate(lengths[k]) for k in lengths)
    return {
        "rows": len(cand),
        "files": len(files),
        "row_groups": sum(pq.ParquetFile(f).num_row_groups for f in files),
        "bytes_on_disk": sum(f.stat().st_size for f in files),
        "candidates_mean": float(cand.mean()),
        "candidates_max": int(cand.max()),
        "history_mean": float(hist.mean()),
        "history_max": int(hist.max()),
    }


# --- phases (each runs in its own process) -------------------------------------------------------------------


def phase_simulate(n: int, out: str) -> dict:
    from deepbandit.sim.simulator import SimulateConfig, simulate

    config = SimulateConfig(n_impressions=n, out_dir=out, overwrite=True, progress=False)
    with PeakRSS() as mem:
        t0, cpu0 = time.perf_counter(), time.process_time()
        summary = simulate(config)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "rows": n,
        "seconds": seconds,
        "rows_per_s": n / seconds,
        "cpu_seconds": cpu_seconds,  # every thread of the process (numpy, Arrow's writer pool)
        "rows_per_cpu_s": n / cpu_seconds,
        "simulator_reported_rows_per_s": summary.get("rows_per_second"),
        "peak_rss_delta_mb": mem.delta_mb,
        "peak_rss_mb": mem.peak_mb,
    }


def phase_fixed(n: int, out: str) -> dict:
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        write_fixed_shape(Path(out), n)
        seconds = time.perf_counter() - t0
    return {"rows": n, "seconds": seconds, "peak_rss_delta_mb": mem.delta_mb}


def _vocabs(root: Path):
    from deepbandit.data.io import read_images, read_titles
    from deepbandit.data.schema import IMAGES_FILE, IMPRESSIONS_DIR, TITLES_FILE
    from deepbandit.data.vocab import FeatureVocabs

    impressions = root / IMPRESSIONS_DIR if (root / IMPRESSIONS_DIR).exists() else root
    images = read_images(root / IMAGES_FILE) if (root / IMAGES_FILE).exists() else None
    titles = read_titles(root / TITLES_FILE) if (root / TITLES_FILE).exists() else None
    t0 = time.perf_counter()
    vocabs = FeatureVocabs.build(impressions, images=images, titles=titles)
    return impressions, vocabs, time.perf_counter() - t0


def phase_read(root: str, mode: str) -> dict:
    """mode: decode (Arrow only), tensors (decode + table_to_batch), tensors_tuned (same after
    tune_allocator), workers2 (tuned, DataLoader with 2 worker processes)."""
    from torch.utils.data import DataLoader

    from deepbandit.data.io import iter_record_batches
    from deepbandit.data.tensors import ImpressionStream, tune_allocator

    if mode in ("tensors_tuned", "workers2"):
        tune_allocator()
    impressions, vocabs, vocab_s = _vocabs(Path(root))
    stream = ImpressionStream(impressions, vocabs, batch_rows=BATCH_ROWS, max_history=MAX_HISTORY)
    rows = 0
    with PeakRSS() as mem:
        t0, cpu0 = time.perf_counter(), time.process_time()
        if mode == "decode":
            for batch in iter_record_batches(
                stream.dataset, columns=stream.columns, batch_rows=BATCH_ROWS, categories_as_dictionary=True
            ):
                rows += batch.num_rows
        elif mode == "workers2":
            loader = DataLoader(stream, batch_size=None, num_workers=2)  # workers tune their own allocator
            for batch in loader:
                rows += len(batch)
        else:
            for batch in stream:
                rows += len(batch)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    out = {
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "cpu_seconds": cpu_seconds,  # this process's threads (the workers2 case's workers are not in it)
        "rows_per_cpu_s": rows / cpu_seconds,
        "peak_rss_delta_mb": mem.delta_mb,
        "peak_rss_mb": mem.peak_mb,  # whole process: interpreter, torch, vocabularies and the stream
        "vocab_build_s": vocab_s,
    }
    if mode == "workers2":
        # the workers hold the batches being built; the main process only receives them
        out["peak_rss_worker_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        del out["peak_rss_delta_mb"], out["peak_rss_mb"]
    if mode != "decode":
        out["last_batch_shapes"] = {
            "candidate_image_idx": list(batch.inputs.candidate_image_idx.shape),
            "history_title_idx": list(batch.inputs.history_title_idx.shape),
        }
    return out


def plain_python(table: pa.Table, vocabs, *, use_pandas: bool) -> dict:
    """The obvious path: rows as Python objects, padded in Python, then torch.tensor."""
    import torch

    image = {k: i + 2 for i, k in enumerate(vocabs.image.keys.tolist())}
    title = {k: i + 2 for i, k in enumerate(vocabs.title.keys.tolist())}
    cats = {
        n: {k: i + 2 for i, k in enumerate(getattr(vocabs, n).keys.tolist())}
        for n in ("country", "language", "device")
    }
    t0 = time.perf_counter()
    if use_pandas:
        df = table.to_pandas()
        rows = {c: df[c].tolist() for c in df.columns}
    else:
        rows = table.to_pydict()
    cands, hists = rows["candidate_image_ids"], rows["played_title_ids"]
    a = max(len(c) for c in cands)
    h = max(1, min(MAX_HISTORY, max(len(x) for x in hists)))
    cand_idx = [[image.get(int(x), 1) for x in c] + [0] * (a - len(c)) for c in cands]
    cand_mask = [[True] * len(c) + [False] * (a - len(c)) for c in cands]
    action = [list(c).index(x) for c, x in zip(cands, rows["chosen_image_id"], strict=True)]
    hist_idx = [[title.get(int(x), 1) for x in list(p)[:h]] + [0] * (h - min(h, len(p))) for p in hists]
    hist_mask = [[True] * min(h, len(p)) + [False] * (h - min(h, len(p))) for p in hists]
    reward = [0.0 if r is None or r != r else r for r in rows["reward"]]
    tensors = {
        "candidate_image_idx": torch.tensor(cand_idx),
        "candidate_mask": torch.tensor(cand_mask),
        "action": torch.tensor(action),
        "history_title_idx": torch.tensor(hist_idx),
        "history_mask": torch.tensor(hist_mask),
        "title_idx": torch.tensor([title.get(int(x), 1) for x in rows["title_id"]]),
        "reward": torch.tensor(reward, dtype=torch.float32),
        "pscore": torch.tensor(rows["propensity"], dtype=torch.float32),
        **{f"{n}_idx": torch.tensor([cats[n].get(x, 1) for x in rows[n]]) for n in cats},
    }
    return {"seconds": time.perf_counter() - t0, "tensors": tensors}


def phase_plain(root: str) -> dict:
    from deepbandit.data.io import open_impressions
    from deepbandit.data.tensors import TENSOR_COLUMNS, table_to_batch

    impressions, vocabs, _ = _vocabs(Path(root))
    table = open_impressions(impressions, columns=list(TENSOR_COLUMNS)).head(PLAIN_ROWS)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        ours = table_to_batch(table, vocabs, max_history=MAX_HISTORY)
        best = min(best, time.perf_counter() - t0)
    out = {"rows": table.num_rows, "ours_rows_per_s": table.num_rows / best}
    for name, use_pandas in (("pylist", False), ("pandas", True)):
        plain = plain_python(table, vocabs, use_pandas=use_pandas)
        for key, value in plain["tensors"].items():  # same numbers, or the comparison means nothing
            mine = (
                getattr(ours.inputs, key) if key in ours.inputs.__dataclass_fields__ else getattr(ours, key)
            )
            if not bool((mine == value).all()):
                raise AssertionError(f"plain path ({name}) disagrees with table_to_batch on {key}")
        out[f"{name}_rows_per_s"] = table.num_rows / plain["seconds"]
        out[f"speedup_vs_{name}"] = out["ours_rows_per_s"] / out[f"{name}_rows_per_s"]
    return out


PHASES = {"simulate": phase_simulate, "fixed": phase_fixed, "read": phase_read, "plain": phase_plain}


def run_child(phase: str, *args) -> dict:
    """Run a phase in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, __file__, "--phase", phase, *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"phase {phase} {args} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # the machine may be shared: runnable processes per core during the phase put its numbers in context
    result["load_average_1min"] = os.getloadavg()[0]
    return result


# --- orchestration -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--out", default="benchmarks/data.json")
    parser.add_argument("--work", default=None, help="scratch folder for the datasets (default: a temp dir)")
    parser.add_argument(
        "--no-simulate", action="store_true", help="skip the simulator (fixed-shape log only)"
    )
    parser.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)  # internal: run one phase, print JSON
    args = parser.parse_args()
    if args.phase:
        name, *rest = args.phase
        params = [int(x) if x.isdigit() else x for x in rest]
        print(json.dumps(PHASES[name](*params)))
        return

    from tqdm import tqdm

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_data_"))
    result = {
        "machine": machine(pyarrow=pa.__version__),
        "settings": {"batch_rows": BATCH_ROWS, "max_history": MAX_HISTORY, "plain_rows": PLAIN_ROWS},
        "load_average_start": os.getloadavg(),
        "runs": [],
    }
    sources = ([] if args.no_simulate else ["simulated"]) + ["fixed_25x20"]
    reads = ["decode", "tensors", "tensors_tuned", "workers2"]
    steps = len(args.sizes) * len(sources) * (1 + len(reads)) + 1
    with tqdm(total=steps, desc="bench_data", file=sys.stderr) as bar:
        for n in args.sizes:
            run: dict = {"n_impressions": n}
            for source in sources:
                root = work / f"{source}_{n}"
                bar.set_postfix_str(f"{n:,} {source}: write")
                if source == "simulated":
                    run["simulate"] = run_child("simulate", n, root)
                else:
                    run["fixed_write"] = run_child("fixed", n, root)
                bar.update()
                entry = {"data": dataset_stats(root / "impressions" if source == "simulated" else root)}
                for mode in reads:
                    bar.set_postfix_str(f"{n:,} {source}: {mode}")
                    entry[mode] = run_child("read", root, mode)
                    bar.update()
                if n == args.sizes[0] and "plain_vs_ours" not in result:
                    bar.set_postfix_str("plain vs ours")
                    result["plain_vs_ours"] = {"source": source, **run_child("plain", root)}
                    bar.update()
                run[source] = entry
                shutil.rmtree(root, ignore_errors=True)
            result["runs"].append(run)
    result["load_average_end"] = os.getloadavg()
    # read_over_decode: Parquet -> tensors against the Arrow decode of the same columns, per CPU-second
    result["ratios"] = {
        f"{run['n_impressions']} {source}": {
            "read_over_decode": run[source]["tensors"]["rows_per_cpu_s"]
            / run[source]["decode"]["rows_per_cpu_s"],
            "read_over_decode_tuned": run[source]["tensors_tuned"]["rows_per_cpu_s"]
            / run[source]["decode"]["rows_per_cpu_s"],
        }
        for run in result["runs"]
        for source in sources
    }
    for run in result["runs"]:
        if "simulate" in run:
            result["ratios"][f"{run['n_impressions']} simulated"]["simulator_rows_per_cpu_s"] = run[
                "simulate"
            ]["rows_per_cpu_s"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary(result), indent=2))
    print(f"wrote {out}", file=sys.stderr)


def summary(result: dict) -> dict:
    """The headline numbers, one line per size and source."""
    lines = {}
    for run in result["runs"]:
        n = run["n_impressions"]
        if "simulate" in run:
            s = run["simulate"]
            lines[f"{n:,} simulate"] = (
                f"{s['rows_per_s'] / 1e6:.2f}M rows/s, peak +{s['peak_rss_delta_mb']:.0f} MB"
            )
        for source in ("simulated", "fixed_25x20"):
            if source not in run:
                continue
            r = run[source]
            lines[f"{n:,} {source}"] = (
                f"decode {r['decode']['rows_per_s'] / 1e6:.2f}M/s; to tensors {r['tensors']['rows_per_s'] / 1e6:.2f}M/s"
                f" (tuned {r['tensors_tuned']['rows_per_s'] / 1e6:.2f}M/s, 2 workers "
                f"{r['workers2']['rows_per_s'] / 1e6:.2f}M/s); peak +{r['tensors']['peak_rss_delta_mb']:.0f} MB"
                f" ({r['tensors']['peak_rss_mb']:.0f} MB process)"
            )
    if "plain_vs_ours" in result:
        p = result["plain_vs_ours"]
        lines["plain vs ours"] = (
            f"ours {p['ours_rows_per_s'] / 1e6:.2f}M/s, to_pylist {p['pylist_rows_per_s'] / 1e3:.0f}k/s "
            f"(x{p['speedup_vs_pylist']:.0f}), to_pandas {p['pandas_rows_per_s'] / 1e3:.0f}k/s (x{p['speedup_vs_pandas']:.0f})"
        )
    return lines


if __name__ == "__main__":
    main()
