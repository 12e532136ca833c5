"""Parquet reading and writing for the log contract."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike, **write_options) -> Path:
    """Write ``table`` to ``path`` so that a crash never leaves a half-written file behind.

    The data goes to a temporary file in the same directory (same filesystem, so the rename is atomic),
    is flushed to disk, and only then renamed over ``path``. Readers see the old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as sink:
            pq.write_table(table, sink, **write_options)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
