"""Reading data files (TSV, CSV, JSONL, text) into texts and labels, and splitting them by
seed into train, validation and test."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from pipeline.config.data import DataConfig
from pipeline.data import demo
from pipeline.data.instruct import Conversation, read_conversations
from pipeline.data.parsing import parse_jsonl, read_text
from pipeline.errors import UserError


@dataclass
class Records:
    texts: list[str]
    labels: list[str] | None
    # data.task=instruct: the conversations (texts holds their contents, one string each).
    conversations: list[Conversation] | None = None
    # The file they were read from (absolute).
    source: str | None = None

    def digest(self) -> str:
        """A hash of the examples themselves (not of the file): splits of the same examples
        share it, whichever file or order of columns they came from."""
        content = json.dumps([self.texts, self.labels, self.conversations], ensure_ascii=False)
        return hashlib.sha256(content.encode()).hexdigest()[:16]


def read_records(path: str | Path, cfg: DataConfig) -> Records:
    """The text (and label) column of a file in `cfg.format`."""
    records = _read(Path(path), cfg)
    records.source = str(Path(path).resolve())
    return records


def _read(path: Path, cfg: DataConfig) -> Records:
    if not path.is_file():
        raise UserError(f"Data file {path} does not exist. Check data.path.")
    want_labels = cfg.task == "classification"
    text = read_text(path)
    if cfg.task == "instruct":
        conversations = read_conversations(path, text, cfg)
        contents = ["\n".join(t["content"] for t in c) for c in conversations]
        return Records(contents, None, conversations)
    if cfg.format == "text":
        lines = [line.strip() for line in text.splitlines()]
        if not any(lines):
            raise UserError(f"{path} holds no examples. Point data.path at a non-empty file.")
        return Records([line for line in lines if line], None)
    if cfg.format == "jsonl":
        rows = parse_jsonl(path, text)
    else:
        delimiter = "\t" if cfg.format == "tsv" else ","
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))
        except csv.Error as exc:
            raise UserError(
                f"Could not read {path} as {cfg.format} ({exc}). Check data.format (tsv, csv, "
                "jsonl, text)."
            ) from None
    if not rows:
        raise UserError(f"{path} holds no examples. Point data.path at a non-empty file.")
    columns = [cfg.text_column] + ([cfg.label_column] if want_labels else [])
    for column in columns:
        if column not in rows[0]:
            key = "data.text_column" if column == cfg.text_column else "data.label_column"
            raise UserError(
                f"{path} has no column {column!r} ({key}). Its columns are: "
                f"{', '.join(map(str, rows[0]))}. Set {key}=<one of them>."
            )
    for number, row in enumerate(rows, start=2 if cfg.format != "jsonl" else 1):
        for column in columns:
            value = row.get(column)
            if value is None:
                raise UserError(
                    f"{path}, {'line' if cfg.format == 'jsonl' else 'row'} {number}, has no "
                    f"value for column {column!r}. Fix that line or remove it."
                )
            if isinstance(value, list | dict):
                raise UserError(
                    f"{path}, line {number}, holds a JSON {type(value).__name__} in column "
                    f"{column!r}, where text or a label belongs. Fix that line or remove it."
                )
    texts = [str(row[cfg.text_column]) for row in rows]
    labels = [str(row[cfg.label_column]) for row in rows] if want_labels else None
    return Records(texts, labels)


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int):
    """Deterministic train/val/test index lists: the same seed gives the same split anywhere."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def _subset(records: Records, idx: list[int]) -> Records:
    def pick(values: list | None) -> list | None:
        return None if values is None else [values[i] for i in idx]

    picked = (pick(records.texts), pick(records.labels), pick(records.conversations))
    return Records(*picked, source=records.source)


def load_splits(cfg: DataConfig, seed: int) -> dict[str, Records]:
    """Train/val/test records: split files where given, the rest split from data.path by seed."""
    if cfg.synthetic_examples:
        write = demo.ensure_instruct_file if cfg.task == "instruct" else demo.ensure_file
        write(cfg.path, cfg.synthetic_examples)
    records = read_records(cfg.path, cfg)
    val_fraction = 0.0 if cfg.val_path else cfg.val_fraction
    test_fraction = 0.0 if cfg.test_path else cfg.test_fraction
    train, val, test = split_indices(len(records.texts), val_fraction, test_fraction, seed)
    splits = {"train": _subset(records, train), "val": _subset(records, val)}
    splits["test"] = _subset(records, test)
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
