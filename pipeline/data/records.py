"""Data files (pipeline/data/reading.py reads each format) into texts and labels, or
conversations, and those split by seed into train, validation and test."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from pipeline.config.data import DataConfig
from pipeline.data import demo
from pipeline.data.instruct import Conversation, read_conversations
from pipeline.data.reading import data_files, detect, read_rows, spec_name
from pipeline.errors import UserError


@dataclass
class Records:
    texts: list[str]
    labels: list[str] | None
    # data.task=instruct: the conversations (texts holds their contents, one string each).
    conversations: list[Conversation] | None = None
    # What they were read from: the file, glob or list of them (absolute).
    source: str | None = None

    @classmethod
    def of_conversations(cls, conversations: list[Conversation], source: str | None = None):
        """Conversations as records: texts holds each one's contents, one string each."""
        contents = ["\n".join(turn["content"] for turn in c) for c in conversations]
        return cls(contents, None, conversations, source)

    def digest(self) -> str:
        """A hash of the examples themselves (not of the file): splits of the same examples
        share it, whichever file or order of columns they came from."""
        content = json.dumps([self.texts, self.labels, self.conversations], ensure_ascii=False)
        return hashlib.sha256(content.encode()).hexdigest()[:16]


def read_records(spec: str | Path | list[str], cfg: DataConfig) -> Records:
    """The text (and label) column, or the conversations, of a file, a glob or a list of them
    (concatenated in order), each file read in its own format (data.format, or what it is)."""
    return concatenated([_read(path, cfg) for path in data_files(spec)], spec_name(spec))


def concatenated(parts: list[Records], source: str) -> Records:
    """Records laid end to end (the files of a spec, the sources of a mixture)."""

    def joined(values: list[list | None]) -> list | None:
        return None if values[0] is None else [v for part in values for v in part or []]

    return Records(
        [text for part in parts for text in part.texts],
        joined([part.labels for part in parts]),
        joined([part.conversations for part in parts]),
        source,
    )


def _read(path: Path, cfg: DataConfig) -> Records:
    fmt = detect(path, cfg.format)
    if cfg.task == "instruct":
        if fmt in ("text", "csv", "tsv"):
            raise UserError(
                f"{path} reads as {fmt}, and data.task=instruct needs records (JSON lines, a "
                "JSON array, Parquet or Arrow) of instructions or conversations. Convert it, "
                "or set data.format to what it holds if its name misleads."
            )
        return Records.of_conversations(read_conversations(path, read_rows(path, fmt), cfg))
    rows = read_rows(path, fmt, cfg.text_column)
    want_labels = cfg.task == "classification"
    columns = [cfg.text_column] + ([cfg.label_column] if want_labels else [])
    for column in columns:
        if column not in rows.column_names():
            key = "data.text_column" if column == cfg.text_column else "data.label_column"
            raise UserError(
                f"{path} has no column {column!r} ({key}). Its columns are: "
                f"{', '.join(rows.column_names()) or 'none'}. Set {key}=<one of them>."
            )
    # A JSON value holds a "JSON list"; a Parquet or Arrow cell just a list.
    json_ = "JSON " if rows.fmt in ("json", "jsonl") else ""
    for i, row in enumerate(rows.rows):
        if not isinstance(row, dict):
            raise UserError(
                f"{path}, {rows.where(i)}, holds a JSON {type(row).__name__}, not an object. "
                'Each record must be an object such as {"text": ..., "label": ...}.'
            )
        for column in columns:
            value = row.get(column)
            if value is None:
                raise UserError(
                    f"{path}, {rows.where(i)}, has no value for column {column!r}. Fix that "
                    f"{rows.kind} or remove it."
                )
            if isinstance(value, list | dict):
                raise UserError(
                    f"{path}, {rows.where(i)}, holds a {json_}{type(value).__name__} in column "
                    f"{column!r}, where text or a label belongs. Fix that {rows.kind} or "
                    "remove it."
                )
    texts = [str(row[cfg.text_column]) for row in rows.rows]
    labels = [str(row[cfg.label_column]) for row in rows.rows] if want_labels else None
    return Records(texts, labels)


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int):
    """Deterministic train/val/test index lists: the same seed gives the same split anywhere."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def subset(records: Records, idx: list[int]) -> Records:
    def pick(values: list | None) -> list | None:
        return None if values is None else [values[i] for i in idx]

    picked = (pick(records.texts), pick(records.labels), pick(records.conversations))
    return Records(*picked, source=records.source)


def load_splits(cfg: DataConfig, seed: int, records: Records | None = None) -> dict[str, Records]:
    """Train/val/test records: split files where given, the rest split by seed from data.path
    (or from `records`, a mixture's)."""
    if cfg.synthetic_examples:
        write = demo.ensure_instruct_file if cfg.task == "instruct" else demo.ensure_file
        write(cfg.path, cfg.synthetic_examples)
    records = records or read_records(cfg.path, cfg)
    val_fraction = 0.0 if cfg.val_path else cfg.val_fraction
    test_fraction = 0.0 if cfg.test_path else cfg.test_fraction
    train, val, test = split_indices(len(records.texts), val_fraction, test_fraction, seed)
    splits = {"train": subset(records, train), "val": subset(records, val)}
    splits["test"] = subset(records, test)
    if cfg.val_path:
        splits["val"] = read_records(cfg.val_path, cfg)
    if cfg.test_path:
        splits["test"] = read_records(cfg.test_path, cfg)
    if not splits["train"].texts:
        raise UserError(
            f"The training split of {records.source} is empty. Lower data.val_fraction / "
            "data.test_fraction or use a larger data file."
        )
    return splits
