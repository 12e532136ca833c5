"""Input checks for the off-policy estimators: types and shapes up front, values chunk by chunk.

Arrays arrive as numpy arrays (memory-mapped ones included) or torch tensors. Shapes and dtypes are checked
before any work; values are checked on each chunk of rows before that chunk is used, so an error names the
first offending row and no estimate is ever returned from partly invalid input.
"""

from __future__ import annotations

import numpy as np
import torch

from deepbandit.errors import UserError

Array = np.ndarray | torch.Tensor


class SupportWarning(UserWarning):
    """The target policy puts probability on candidates that the logging policy never shows."""


class ReplayBiasWarning(UserWarning):
    """Replay on rows with different candidate counts: matched rows over-represent small candidate sets."""


class EstimationError(UserError, ValueError):
    """The inputs are valid but carry no information about the requested value (say so, print no number)."""


def sum_tolerance(dtype: np.dtype | torch.dtype) -> float:
    """Absolute tolerance on a probability distribution's sum for values stored in ``dtype``.

    float32 softmax over a few hundred candidates rounds to ~1e-6, so float32 input gets 1e-5.
    """
    itemsize = (
        torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else dtype.itemsize
    )
    return {8: 1e-6, 4: 1e-5}.get(itemsize, 1e-2)


def _kind(x: Array) -> str:
    """numpy-style dtype kind: 'f' float, 'i'/'u' integer, 'b' bool."""
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bool:
            return "b"
        if x.is_floating_point():
            return "f"
        return "c" if x.is_complex() else "i"
    return x.dtype.kind


def check_array(name: str, x: object, shape: tuple[int | None, ...], kinds: str) -> Array:
    """Check that ``x`` is a numpy array or torch tensor of ``shape`` (None: any size) with a dtype kind in ``kinds``."""
    if not isinstance(x, np.ndarray | torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    want = {"f": "floating", "i": "integer", "b": "bool"}
    if _kind(x) not in kinds.replace("i", "iu"):
        raise TypeError(f"{name} must be {' or '.join(want[k] for k in kinds)}, got dtype {x.dtype}")
    if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape, strict=True)):
        pretty = (
            "("
            + ", ".join("?" if s is None else str(s) for s in shape)
            + ("," if len(shape) == 1 else "")
            + ")"
        )
        raise ValueError(f"{name} must have shape {pretty}, got {tuple(x.shape)}")
    return x


def to_chunk(
    x: Array, start: int, stop: int, device: torch.device, dtype: torch.dtype | None
) -> torch.Tensor:
    """Rows ``start:stop`` of ``x`` as a tensor on ``device`` (cast to ``dtype`` unless None)."""
    part = x[start:stop]
    if isinstance(part, np.ndarray):
        # Read-only memory maps would make torch warn; a chunk-sized copy is cheap next to the disk read.
        part = torch.from_numpy(part if part.flags.writeable and part.flags.c_contiguous else part.copy())
    return part.to(device=device, dtype=dtype) if dtype is not None else part.to(device=device)


def fail_rows(bad: torch.Tensor, start: int, template: str, values: torch.Tensor | None = None) -> None:
    """Raise ValueError naming the first True row of ``bad`` (m,) in a chunk that starts at row ``start``.

    ``template`` formats ``{i}`` (the global row) and ``{v}`` (``values`` at that row); the number of bad
    rows in the chunk is appended when there are several.
    """
    if not bool(bad.any()):
        return
    rows = torch.nonzero(bad).flatten()
    j = int(rows[0])
    v = values[j].item() if values is not None else None
    more = f" ({len(rows)} such rows in rows {start}..{start + len(bad) - 1})" if len(rows) > 1 else ""
    raise ValueError(template.format(i=start + j, v=v) + more)


def check_distribution(
    name: str, dist: torch.Tensor, mask: torch.Tensor | None, start: int, tol: float
) -> torch.Tensor:
    """Check that every row of ``dist`` (m, A) is a probability distribution over the row's candidates.

    Two cheap passes clear valid input: when the global minimum is >= 0 and every row sum is finite and
    within ``tol`` of 1, every entry is finite and in [0, 1]. Only then-failing input is searched for the
    first bad row and entry. Returns the row sums (m,).
    """
    sums = dist.sum(dim=1)
    bad_sum = ~((sums - 1).abs() <= tol)
    if bool(bad_sum.any()) or not bool(dist.min() >= 0):
        bad = bad_sum | ~(dist.amin(dim=1) >= 0)
        j = int(torch.nonzero(bad)[0])
        row = dist[j]
        entry = torch.nonzero(~torch.isfinite(row) | (row < 0)).flatten()
        if len(entry):
            a = int(entry[0])
            raise ValueError(
                f"{name}[{start + j}, {a}] = {float(row[a])} is not a probability (must be finite and >= 0)"
            )
        raise ValueError(f"{name}[{start + j}] sums to {float(sums[j]):.9g}, not 1 (tolerance {tol:g})")
    if mask is not None:
        on_padding = ~mask & (dist != 0)
        if bool(on_padding.any()):
            j, a = (int(i) for i in torch.nonzero(on_padding)[0])
            raise ValueError(
                f"{name}[{start + j}, {a}] = {float(dist[j, a])} puts mass on padding "
                f"(candidate_mask[{start + j}, {a}] is False)"
            )
    return sums


def deterministic_action_dist(chosen: Array, n_candidates: int, candidate_mask: Array | None = None) -> Array:
    """One-hot ``action_dist`` (n, n_candidates) of a deterministic policy that picks ``chosen`` (n,).

    Returns float64 of the same kind as ``chosen`` (numpy array, or torch tensor on its device).
    ``candidate_mask`` (n, n_candidates), when given, must be True at every chosen position.
    """
    check_array("chosen", chosen, (None,), "i")
    if n_candidates < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
    index = torch.as_tensor(chosen).long()
    fail_rows(
        (index < 0) | (index >= n_candidates),
        0,
        f"chosen[{{i}}] = {{v}} is outside [0, {n_candidates})",
        index,
    )
    if candidate_mask is not None:
        check_array("candidate_mask", candidate_mask, (len(index), n_candidates), "b")
        mask = torch.as_tensor(candidate_mask, device=index.device)
        picked = mask.gather(1, index[:, None]).squeeze(1)
        fail_rows(~picked, 0, "chosen[{i}] = {v} points at padding (candidate_mask is False there)", index)
    dist = torch.zeros(len(index), n_candidates, dtype=torch.float64, device=index.device)
    dist.scatter_(1, index[:, None], 1.0)
    return dist.numpy() if isinstance(chosen, np.ndarray) else dist
