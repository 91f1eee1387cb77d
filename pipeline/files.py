"""Writing files so that an interrupted write never leaves one that looks complete."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, flush it to disk, then rename it
    over `path`: a crash at any point leaves either the old file or the new one, whole."""
    return publish(write_beside(path, write), path)


def write_beside(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """The first half of `atomic_write`: the new content, on disk under a temporary name
    beside `path`, which is still untouched. `publish` puts it in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp made it 0600 (and a writer may replace it with its own temporary file): it
        # gets the mode any new file gets, so a teammate on a shared file system can read it.
        os.chmod(tmp, _new_file_mode())
        _fsync(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def publish(tmp: Path, path: str | Path) -> Path:
    """Rename a file written by `write_beside` over `path`, durably."""
    path = Path(path)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)  # the rename itself
    return path


def move_files_into(source: str | Path, directory: Path) -> None:
    """Move every file written under `source` (a temporary folder beside `directory`) into
    `directory`, each flushed to disk first, so a crash leaves whole files only."""
    for path in Path(source).iterdir():
        _fsync(path)
        os.replace(path, directory / path.name)
    _fsync(directory)


def _new_file_mode() -> int:
    """The mode open() gives a new file under this process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
