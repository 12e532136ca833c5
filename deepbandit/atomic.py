"""Files that appear whole or not at all: the one atomic writer behind every file deepbandit writes.

The bytes go to a temporary file in the destination's folder (same filesystem, so the rename is atomic),
are flushed to disk, and only then renamed over the destination: a reader sees the old file or the new one,
and a crash leaves no half-written file (the temporary one starts with a dot, which readers skip).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def file_mode() -> int:
    """Permissions of a new file under the current umask (mkstemp's temporary files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write into; on a clean exit it replaces ``path``, on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as sink:
            yield sink
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``text`` (UTF-8) to ``path``, atomically."""
    with atomic_file(path) as sink:
        sink.write(text.encode())
    return Path(path)
