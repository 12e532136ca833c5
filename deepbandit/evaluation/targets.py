"""Target policies to evaluate, from wherever they live: a trained bundle, an ONNX export folder, a table of
action distributions, or any Python callable. Each becomes a function of the evaluated impressions table
that returns a :class:`TargetOutput` aligned with the rows' ``candidate_image_ids``.

    deepbandit evaluate dataset=data/sim +targets.mine=runs/sim/export           # ONNX export folder (cli/targets.py)
    deepbandit evaluate dataset=data/sim +targets.mine=my_policy.parquet         # request_id, action_dist
    evaluate_rows(table, titles, settings, targets={"mine": lambda t: my_dists(t)})  # (n, A) array

A table of action distributions has one row per evaluated impression: ``request_id`` (string) and
``action_dist`` (list<double>, one probability per candidate, in the order of the log's
``candidate_image_ids``, summing to 1). Extra rows (other requests) are ignored; a missing, repeated or
malformed row is an error naming the file, the request and what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from deepbandit.errors import DataError

PROBABILITY_TOLERANCE = 1e-6  # |sum - 1| allowed in a user's action distribution (float32 rounding)


@dataclass
class TargetOutput:
    """A target policy on n evaluated rows: action_dist (n, A) over each row's candidates (0 on padding),
    expected_reward (n, A) or None (the policy's own reward model, e.g. a network's predictions)."""

    action_dist: np.ndarray
    expected_reward: np.ndarray | None = None


Target = Callable[[pa.Table], "TargetOutput | np.ndarray"]


@dataclass
class TargetPolicy:
    """A named target: ``policy(table)`` scores the evaluated rows; ``source`` says where it came from."""

    policy: Target
    source: str

    def __call__(self, table: pa.Table, candidate_mask: np.ndarray) -> TargetOutput:
        out = self.policy(table)
        if not isinstance(out, TargetOutput):
            out = TargetOutput(np.asarray(out, dtype=np.float64))
        return TargetOutput(
            _aligned(out.action_dist, candidate_mask, self.source, "action_dist"),
            None
            if out.expected_reward is None
            else _aligned(out.expected_reward, candidate_mask, self.source, "expected_reward", dist=False),
        )


def _aligned(x: Any, mask: np.ndarray, source: str, what: str, dist: bool = True) -> np.ndarray:
    """``x`` (n, A') checked against the rows' candidates and padded to (n, A)."""
    x = np.asarray(x, dtype=np.float64)
    n, a = mask.shape
    if x.ndim != 2 or x.shape[0] != n or x.shape[1] > a:
        raise DataError(
            f"{source}: {what} has shape {x.shape}; expected ({n}, <= {a}) for {n} evaluated rows"
        )
    x = np.pad(x, ((0, 0), (0, a - x.shape[1])))
    bad = ~np.isfinite(x) | (mask == 0) & (x != 0)
    if dist:
        bad |= x < 0
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        why = (
            "puts mass on padding (past the row's candidates)"
            if not mask[row, col]
            else "is not a probability"
        )
        raise DataError(f"{source}: {what}[{row}, {col}] = {x[row, col]} {why}")
    if dist:
        sums = x.sum(axis=1)
        off = np.abs(sums - 1) > PROBABILITY_TOLERANCE
        if off.any():
            row = int(np.flatnonzero(off)[0])
            raise DataError(f"{source}: action_dist of evaluated row {row} sums to {sums[row]:.9g}, not 1")
    return x


def table_policy(path: str | os.PathLike) -> Target:
    """A Parquet file (or folder of files) of ``request_id`` and ``action_dist``, joined to the evaluated
    rows by request_id (see the module docstring)."""
    where = str(path)
    try:
        names = pq.ParquetDataset(path).schema.names
    except (pa.ArrowInvalid, KeyError, OSError) as err:
        raise DataError(f"{where}: not a readable Parquet file or folder ({err})") from err
    missing = [c for c in ("request_id", "action_dist") if c not in names]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; it has {names}")
    try:
        given = pq.read_table(path, columns=["request_id", "action_dist"])
    except (pa.ArrowInvalid, KeyError, OSError) as err:
        raise DataError(f"{where}: cannot read request_id and action_dist ({err})") from err
    ids = given.column("request_id")
    if not pa.types.is_string(ids.type) and not pa.types.is_large_string(ids.type):
        raise DataError(f"{where}: column 'request_id' must be strings, got {ids.type}")
    if not pa.types.is_list(given.column("action_dist").type):
        raise DataError(f"{where}: column 'action_dist' must be a list of probabilities")
    for name in ("request_id", "action_dist"):
        if given.column(name).null_count:
            row = int(np.flatnonzero(given.column(name).is_null().to_numpy(zero_copy_only=False))[0])
            rid = "" if name == "request_id" else f" (request_id {ids[row].as_py()!r})"
            raise DataError(f"{where}: column '{name}' is null at row {row}{rid}")
    id_values = ids.to_numpy(zero_copy_only=False).astype(str)
    order = np.argsort(id_values, kind="stable")
    sorted_ids = id_values[order]
    repeated = sorted_ids[1:] == sorted_ids[:-1]
    if repeated.any():
        raise DataError(f"{where}: request_id {str(sorted_ids[1:][repeated][0])!r} appears more than once")
    lists = given.column("action_dist").combine_chunks()

    def policy(table: pa.Table) -> np.ndarray:
        wanted = table.column("request_id").to_numpy(zero_copy_only=False).astype(str)
        pos = np.clip(np.searchsorted(sorted_ids, wanted), 0, len(sorted_ids) - 1)
        missing = sorted_ids[pos] != wanted
        if missing.any():
            raise DataError(
                f"{where}: no action_dist for request_id {str(wanted[missing][0])!r} ({int(missing.sum())} of "
                f"{len(wanted)} evaluated rows missing)"
            )
        picked = lists.take(pa.array(order[pos]))
        lengths = pc.list_value_length(picked).to_numpy(zero_copy_only=False)
        expected = pc.list_value_length(table.column("candidate_image_ids")).to_numpy(zero_copy_only=False)
        wrong = lengths != expected
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            raise DataError(
                f"{where}: request_id {str(wanted[i])!r} has {lengths[i]} probabilities for {expected[i]} candidates"
            )
        flat = pc.list_flatten(picked).to_numpy(zero_copy_only=False).astype(np.float64)
        out = np.zeros((len(wanted), int(expected.max()) if len(expected) else 0))
        row = np.repeat(np.arange(len(wanted)), lengths)
        col = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[row, col] = flat
        sums = out.sum(axis=1)
        bad = ~np.isfinite(sums) | (np.abs(sums - 1) > PROBABILITY_TOLERANCE) | (out.min(axis=1) < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where}: action_dist of request_id {str(wanted[i])!r} is not a probability distribution "
                f"(sum {sums[i]:.9g}, entries {out[i, : expected[i]].tolist()})"
            )
        return out

    return policy
