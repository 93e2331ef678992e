"""State kept in small files that several processes share (the routing table, run
records): an exclusive `flock` around a read-modify-write, and a replace that readers
see whole or not at all. The kernel drops a lock when its process dies, even on SIGKILL."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(lock_file: Path, wait: bool = True) -> Iterator[None]:
    """Hold `lock_file`'s lock; `wait=False` raises `BlockingIOError` when another holds it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def replace_file(path: Path, content: str | bytes) -> None:
    """Write `content` beside `path` (fsynced), then rename it over `path`."""
    mode = "wb" if isinstance(content, bytes) else "w"
    with tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.stem}-", delete=False) as staging:
        staging.write(content)
        staging.flush()
        os.fsync(staging.fileno())
    os.replace(staging.name, path)
