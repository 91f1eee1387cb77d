"""The prepared-data cache (data.cache_dir): a prepared DataBundle saved as numpy arrays,
opened memory-mapped by every later run, resume and sweep trial with the same data settings.

Why .npy files and not Arrow through Hugging Face `datasets`: a split is three or four flat
arrays (ids, row offsets, trained flags, labels), which numpy maps in microseconds with no
per-row structure and no extra import (`datasets` costs its import and its own fingerprint
bookkeeping in every run); token ids take two bytes where the vocabulary allows. nanoGPT and
Megatron keep tokens the same way.

A folder's name is a fingerprint of everything that changes the arrays: each input file's
content digest, the tokenizer (its files' digest, or the settings it is trained with), the
task, template, fields, columns, max_length, train_on, packing, chunking, split fractions, the
seed, and this layout's version. It is built once: under a lock beside it, in a temporary
folder renamed into place when whole, so parallel trials build it once and an interrupted
build leaves nothing that looks complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.config.data import DataConfig
from pipeline.data.arrays import TokenizedSplit
from pipeline.data.bundle import DataBundle, SplitSource
from pipeline.data.conversations import chat_tokenizer
from pipeline.data.digests import FileDigests
from pipeline.data.reading import data_files
from pipeline.data.tokenizer import TextTokenizer
from pipeline.errors import UserError
from pipeline.files import atomic_write, write_json, write_text

# Raised whenever what a folder holds, or what preparation writes into it, changes.
LAYOUT = 1
SPLITS = ("train", "val", "test")
# Settings that do not change the prepared arrays.
_NOT_KEYED = {"name", "num_workers", "num_proc", "cache_dir", "synthetic_examples"}

Prepare = Callable[[DataConfig, int, TextTokenizer | None, list[str] | None], DataBundle]


def cached(
    cfg: DataConfig,
    seed: int,
    tokenizer: TextTokenizer | None,
    label_names: list[str] | None,
    prepare: Prepare,
) -> DataBundle:
    """The data prepared with these settings: opened from the cache, or prepared by
    `prepare(...)`, saved and opened."""
    root = Path(cfg.cache_dir)
    _writable(root)
    key = fingerprint(cfg, seed, _tokenizer_key(cfg, tokenizer), label_names)
    bundle = _open(root / key)
    if bundle is not None:
        return bundle
    with _locked(root / f"{key}.lock"):
        bundle = _open(root / key)
        if bundle is not None:  # another run built it while this one waited
            return bundle
        shutil.rmtree(root / key, ignore_errors=True)  # stale or damaged: rebuilt
        start = time.perf_counter()
        bundle = prepare(cfg, seed, tokenizer, label_names)
        _save(bundle, root, key)
        print(f"Prepared the data in {time.perf_counter() - start:.1f} s into {root / key}.")
    # The key a later command that brings this tokenizer (evaluate, from the checkpoint)
    # computes, for the same folder.
    alias = fingerprint(cfg, seed, _digest(bundle.tokenizer), bundle.label_names or None)
    if alias != key and not (root / alias).exists():
        with contextlib.suppress(FileExistsError):
            os.symlink(key, root / alias)
    return _open(root / key)


def fingerprint(
    cfg: DataConfig, seed: int, tokenizer_key: str, label_names: list[str] | None
) -> str:
    settings = cfg.model_dump(mode="json", exclude=_NOT_KEYED)
    digests = FileDigests(Path(cfg.cache_dir))
    files = {key: _digests(cfg, key, digests) for key in ("path", "val_path", "test_path")}
    files["datasets"] = [_digests(source, "path", digests) for source in cfg.datasets]
    digests.save()
    content = {
        "layout": LAYOUT,
        "settings": settings,
        "files": files,
        "seed": seed,
        "tokenizer": tokenizer_key,
        "labels": label_names or None,
    }
    text = json.dumps(content, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _tokenizer_key(cfg: DataConfig, tokenizer: TextTokenizer | None) -> str:
    if tokenizer is None and cfg.tokenizer.path:
        tokenizer = TextTokenizer.load(cfg.tokenizer.path)
    if tokenizer is None:
        t = cfg.tokenizer
        return f"trained:{t.vocab_size}:{t.min_frequency}"
    if cfg.task == "instruct":
        tokenizer = chat_tokenizer(cfg, tokenizer)
    return _digest(tokenizer)


def _digest(tokenizer: TextTokenizer) -> str:
    return "sha256:" + hashlib.sha256(tokenizer.to_json().encode()).hexdigest()


def _digests(cfg, key: str, digests: FileDigests) -> list[list[str]] | None:
    """The content digests of the files `cfg.<key>` names (cfg: data's settings, or one
    source of a mixture)."""
    spec = getattr(cfg, key)
    if spec is None:
        return None
    return [[str(path), digests(path)] for path in data_files(spec)]


def _open(folder: Path) -> DataBundle | None:
    """The bundle saved in `folder`; None when there is none, or one of another layout or
    damaged (then it is rebuilt)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("layout") != LAYOUT:
            return None
        tokenizer = TextTokenizer.from_json((folder / "tokenizer.json").read_text())
        splits = {name: TokenizedSplit.open(folder / name) for name in SPLITS}
    except (OSError, ValueError, KeyError):
        return None
    bundle = DataBundle(
        meta["task"],
        tokenizer,
        splits,
        meta["label_names"],
        {name: SplitSource(**s) for name, s in meta["sources"].items()},
        meta["notes"],
    )
    bundle.cache = folder.resolve()
    bundle.cache_bytes = meta["bytes"]
    return bundle


def _save(bundle: DataBundle, root: Path, key: str) -> None:
    tmp = root / f".{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        size = 0
        for name in SPLITS:
            (tmp / name).mkdir(parents=True)
            size += bundle.splits[name].save(tmp / name)
        write_text(tmp / "tokenizer.json", bundle.tokenizer.to_json())
        meta = {
            "layout": LAYOUT,
            "task": bundle.task,
            "label_names": bundle.label_names,
            "sources": {name: vars(s) for name, s in bundle.sources.items()},
            "notes": bundle.notes,
            "rows": {name: len(s) for name, s in bundle.splits.items()},
            "tokens": {name: s.tokens for name, s in bundle.splits.items()},
            "bytes": size,
        }
        # meta.json last: a folder without it is not a cache entry.
        write_json(tmp / "meta.json", meta)
        os.rename(tmp, root / key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"Waiting for another run preparing the same data ({path.with_suffix('')}).",
                file=sys.stderr,
            )
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write(root / ".writable", lambda tmp: tmp.write_text(""))
    except OSError as exc:
        raise UserError(
            f"data.cache_dir={root} cannot be written ({exc.strerror or exc}). Point "
            "data.cache_dir at a folder you can write, or set data.cache_dir=null to prepare "
            "the data in memory for each run."
        ) from None
