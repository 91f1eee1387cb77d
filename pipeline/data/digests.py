"""Content digests of data files, shared by the prepared-data cache's fingerprint and the run's
provenance tags: one reading of a file serves both, and a file seen before is recognised by its
size, time and inode instead of being read again."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from pipeline.files import write_json


class FileDigests:
    """The sha256 of files' contents, remembered (in root/files.json, read and written once by
    its user) with each file's size, time and inode, so an unchanged file is not read again to
    be recognised; with no root, nothing is remembered."""

    def __init__(self, root: Path | None):
        self.path = None if root is None else root / "files.json"
        try:
            self.memo = json.loads(self.path.read_text()) if self.path else {}
        except (OSError, ValueError):
            self.memo = {}
        self.changed = False

    def __call__(self, path: Path) -> str:
        path = Path(path).resolve()
        if path.is_dir():  # an Arrow folder: its files' digests
            parts = [f"{p.name}:{self(p)}" for p in sorted(path.iterdir()) if p.is_file()]
            return hashlib.sha256("\n".join(parts).encode()).hexdigest()
        info = path.stat()
        stamp = [info.st_size, info.st_mtime_ns, info.st_ino]
        entry = self.memo.get(str(path))
        if entry and entry[0] == stamp:
            return entry[1]
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        self.memo[str(path)] = [stamp, digest.hexdigest()]
        self.changed = True
        return digest.hexdigest()

    def save(self) -> None:
        if self.changed and self.path is not None:
            with contextlib.suppress(OSError):
                write_json(self.path, self.memo)
