"""The training source of data.streaming read one record at a time: never the whole file in
memory, only the records of one shard parsed, and a seeded shuffle buffer for the order.

A record's index counts the file's records (non-empty lines of a text file, JSONL lines,
CSV/TSV rows) from 0; the first `skip` are held out (validation) and the rest dealt out
round-robin: training record j (index skip + j) belongs to shard j % n_shards.
"""

from __future__ import annotations

import csv
import functools
import random
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from pipeline.config.data import DataConfig
from pipeline.data.instruct import read_conversations
from pipeline.data.parsing import json_line
from pipeline.data.reading import Rows, detect
from pipeline.errors import UserError

# What a record becomes: the text (causal_lm) or the conversation (instruct).
Record = Any


def raw_records(cfg: DataConfig) -> Iterator[tuple[int, Any]]:
    """(line number, raw record) for every record of data.path, unparsed where parsing can
    wait (a JSONL line stays a string until its shard needs it)."""
    path = Path(cfg.path)
    if not path.is_file():
        raise UserError(f"Data file {path} does not exist. Check data.path.")
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            fmt = _format(cfg.path, cfg.format)
            if fmt in ("csv", "tsv"):
                delimiter = "\t" if fmt == "tsv" else ","
                for row in csv.DictReader(handle, delimiter=delimiter):
                    yield 0, row
                return
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} is not UTF-8 text ({exc.reason}). Convert the file to UTF-8, e.g. iconv "
            "-f latin1 -t utf-8."
        ) from None
    except csv.Error as exc:
        raise UserError(
            f"Could not read {path} as {cfg.format} ({exc}). Check data.format."
        ) from None


def parse(cfg: DataConfig, number: int, raw: Any) -> Record:
    """One raw record as training reads it; a bad one is refused with its line."""
    path = Path(cfg.path)
    fmt = _format(cfg.path, cfg.format)
    if fmt == "text":
        return raw.strip()
    row = raw
    if fmt == "jsonl":
        row = json_line(path, number, raw)
    if cfg.task == "instruct":
        (conversation,) = read_conversations(path, Rows([row], "line", [number]), cfg)
        return conversation
    value = row.get(cfg.text_column) if isinstance(row, dict) else None
    if value is None or isinstance(value, list | dict):
        where = f"line {number}" if number else "a row"
        raise UserError(
            f"{path}, {where}, has no text in column {cfg.text_column!r} (data.text_column). "
            "Fix that record or remove it, or set data.text_column to the column of the text."
        )
    return str(value)


@functools.lru_cache(maxsize=8)
def _format(path: str, configured: str) -> str:
    fmt = detect(Path(path), configured)
    if fmt not in ("jsonl", "text", "csv", "tsv"):
        raise UserError(
            f"{path} reads as {fmt}; data.streaming reads JSON lines, text, CSV or TSV one "
            "record at a time. Convert it, or drop data.streaming."
        )
    return fmt


def head(cfg: DataConfig, n: int) -> list[Record]:
    """The first n records of data.path, parsed (the held-out validation and the sample the
    tokenizer learns from)."""
    return [parse(cfg, number, raw) for number, raw in islice(raw_records(cfg), n)]


def shard_records(cfg: DataConfig, skip: int, shard: int, n_shards: int) -> Iterator[Record]:
    """The training records of one shard, in file order, parsed."""
    for index, (number, raw) in enumerate(raw_records(cfg)):
        if index >= skip and (index - skip) % n_shards == shard:
            yield parse(cfg, number, raw)


def shuffled(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """`items` in a shuffle-buffer order: a buffer of `size` filled from the stream, each
    next item a random one of the buffer, replaced by the next from the stream. The order is
    a function of the items' order and the generator's seed alone."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


def pass_order(
    cfg: DataConfig, seed: int, skip: int, shard: int, n_shards: int, epoch: int
) -> Iterator[Record]:
    """One pass (epoch) of a shard in its shuffled order, drawn from (seed, epoch, shard)."""
    rng = random.Random(f"stream-{seed}-{epoch}-{shard}")
    return shuffled(shard_records(cfg, skip, shard, n_shards), cfg.shuffle_buffer, rng)
