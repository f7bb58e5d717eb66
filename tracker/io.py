"""Files on disk: atomic writes (what a user ran is never left half-written by an interrupted process), the
content hash every key is made with, and the lock every cache builder takes."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import filelock


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path in the same folder; on success it replaces `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def stable_hash(value: Any, length: int = 16, algorithm: str = "sha256") -> str:
    """The one way this project names things by content (cache keys, data keys, architecture keys): a string is
    hashed as it is, anything else as sorted-key JSON. Changing this renames every cache and study key."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return hashlib.new(algorithm, text.encode()).hexdigest()[:length]


def file_lock(path: str | os.PathLike) -> "filelock.FileLock":
    """The one inter-process lock (a lock file beside what it guards): builders of a cache take it, and a second
    process waits for the first instead of building the same thing again."""
    import filelock

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(path))
