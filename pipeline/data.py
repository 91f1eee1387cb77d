"""Data: read TSV/CSV/JSONL/text files, split them by seed, tokenize, and batch for Lightning.

Classification batches carry the index of each example's last real token (the pooled position);
causal-LM batches carry next-token targets with -100 wherever there is padding.
"""

from __future__ import annotations

import csv
import io
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pipeline import demo_data
from pipeline.config import DataConfig
from pipeline.errors import UserError
from pipeline.tokenizer import TextTokenizer

IGNORE_INDEX = -100


@dataclass
class Records:
    texts: list[str]
    labels: list[str] | None


def read_text(path: Path) -> str:
    """The file as UTF-8; anything else is reported with the line where decoding failed."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a byte-order mark is not part of the first column
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path}, line {line}, is not UTF-8 text (byte {data[exc.start]:#04x} at offset "
            f"{exc.start}). Convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8."
        ) from None


def parse_jsonl(path: Path, text: str) -> list[dict]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path}, line {number}, is not valid JSON ({exc.msg}, column {exc.colno}). "
                "Each line of a .jsonl file must hold one JSON object; fix or remove that line."
            ) from None
        if not isinstance(row, dict):
            raise UserError(
                f"{path}, line {number}, holds a JSON {type(row).__name__}, not an object. "
                'Each line must be an object such as {"text": ..., "label": ...}.'
            )
        rows.append(row)
    return rows


def read_records(path: str | Path, cfg: DataConfig) -> Records:
    """The text (and label) column of a file in `cfg.format`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Data file {path} does not exist. Check data.path.")
    want_labels = cfg.task == "classification"
    text = read_text(path)
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
            if row.get(column) is None:
                raise UserError(
                    f"{path}, {'line' if cfg.format == 'jsonl' else 'row'} {number}, has no "
                    f"value for column {column!r}. Fix that line or remove it."
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
    labels = None if records.labels is None else [records.labels[i] for i in idx]
    return Records([records.texts[i] for i in idx], labels)


def load_splits(cfg: DataConfig, seed: int) -> dict[str, Records]:
    """Train/val/test records: split files where given, the rest split from data.path by seed."""
    if cfg.synthetic_examples:
        demo_data.ensure_file(cfg.path, cfg.synthetic_examples)
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
            "The training split is empty. Lower data.val_fraction / data.test_fraction or "
            "use a larger data file."
        )
    return splits


@dataclass
class TokenizedSplit:
    ids: list[list[int]]
    labels: list[int] | None = None


@dataclass
class DataBundle:
    """Everything the model and the trainer need to know about the data."""

    task: str
    tokenizer: TextTokenizer
    splits: dict[str, TokenizedSplit]
    label_names: list[str] = field(default_factory=list)

    @property
    def n_outputs(self) -> int | None:
        """Head width: None for a language model, 1 for binary, else the class count."""
        if self.task == "causal_lm":
            return None
        return 1 if len(self.label_names) == 2 else len(self.label_names)


def tokenize(
    splits: dict[str, Records],
    cfg: DataConfig,
    tokenizer: TextTokenizer,
    label_names: list[str] | None = None,
) -> DataBundle:
    """Token ids truncated to data.max_length; labels mapped to indices of `label_names`
    (taken from the training split, sorted, when not given)."""
    if cfg.task == "classification" and label_names is None:
        label_names = sorted(set(splits["train"].labels or []))
        if len(label_names) < 2:
            raise UserError(
                f"The training split has {len(label_names)} distinct label(s) in column "
                f"{cfg.label_column!r}; classification needs at least 2. Check "
                "data.label_column, or use data.task=causal_lm for unlabelled text."
            )
    label_index = {name: i for i, name in enumerate(label_names or [])}
    out: dict[str, TokenizedSplit] = {}
    encoded = {name: tokenizer.encode_batch(records.texts) for name, records in splits.items()}
    check_lengths(encoded, cfg, tokenizer.eos_id if cfg.task == "causal_lm" else None)
    for name, records in splits.items():
        ids = encoded[name]
        if cfg.task == "causal_lm":
            # The end-of-text token teaches the model where a text stops.
            ids = [[*seq, tokenizer.eos_id][: cfg.max_length] for seq in ids]
            ids = [seq for seq in ids if len(seq) >= 2]
            out[name] = TokenizedSplit(ids)
            continue
        keep = [i for i, seq in enumerate(ids) if seq]
        unknown = sorted({records.labels[i] for i in keep} - set(label_index))
        if unknown:
            raise UserError(
                f"The {name} split has labels not seen in training: {unknown[:5]}. Known "
                f"labels: {label_names}. Fix the data or its split."
            )
        out[name] = TokenizedSplit(
            [ids[i][: cfg.max_length] for i in keep],
            [label_index[records.labels[i]] for i in keep],
        )
    return DataBundle(cfg.task, tokenizer, out, list(label_names or []))


def check_lengths(encoded: dict[str, list[list[int]]], cfg: DataConfig, eos: int | None) -> None:
    """Texts longer than data.max_length tokens (counting the end-of-text token a language
    model adds) are cut with a warning, or refused with data.long_sequences=error."""
    extra = 0 if eos is None else 1
    long = {
        name: [i for i, seq in enumerate(ids) if len(seq) + extra > cfg.max_length]
        for name, ids in encoded.items()
    }
    count = sum(map(len, long.values()))
    if not count:
        return
    longest = max(len(encoded[n][i]) + extra for n, idx in long.items() for i in idx)
    where = ", ".join(f"{len(idx)} in {name}" for name, idx in long.items() if idx)
    summary = (
        f"{count} texts ({where}) are longer than data.max_length={cfg.max_length} tokens "
        f"(the longest has {longest})"
    )
    if cfg.long_sequences == "error":
        name, idx = next((n, idx) for n, idx in long.items() if idx)
        raise UserError(
            f"{summary}; the first is example {idx[0]} of the {name} split. Raise "
            f"data.max_length (at most model.context_length), shorten those texts, or set "
            "data.long_sequences=truncate to cut them."
        )
    print(
        f"warning: {summary}; they are truncated. data.long_sequences=error refuses them.",
        file=sys.stderr,
    )


def build_tokenizer(cfg: DataConfig, train_texts: list[str]) -> TextTokenizer:
    if cfg.tokenizer.path:
        return TextTokenizer.load(cfg.tokenizer.path)
    return TextTokenizer.train(train_texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)


def build_data(
    cfg: DataConfig,
    seed: int,
    tokenizer: TextTokenizer | None = None,
    label_names: list[str] | None = None,
) -> DataBundle:
    splits = load_splits(cfg, seed)
    tokenizer = tokenizer or build_tokenizer(cfg, splits["train"].texts)
    return tokenize(splits, cfg, tokenizer, label_names)


class Collator:
    """Right-pads a list of examples into tensors; padding never reaches the loss."""

    def __init__(self, task: str, pad_id: int, binary: bool):
        self.task, self.pad_id, self.binary = task, pad_id, binary

    def __call__(self, batch: list[tuple[list[int], int | None]]) -> dict:
        lengths = [len(ids) for ids, _ in batch]
        width = max(lengths)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        for row, (ids, _) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        out = {
            "input_ids": input_ids,
            "lengths": torch.tensor(lengths, dtype=torch.long),
            # A plain int, counted here on the CPU so the training step never syncs for it.
            "n_tokens": sum(lengths),
        }
        if self.task == "causal_lm":
            targets = torch.full_like(input_ids, IGNORE_INDEX)
            for row, n in enumerate(lengths):
                targets[row, : n - 1] = input_ids[row, 1:n]
            out["targets"] = targets
        else:
            labels = torch.tensor([label for _, label in batch])
            out["labels"] = labels.float() if self.binary else labels.long()
        return out


class EpochShuffle(DistributedSampler):
    """A fresh permutation each epoch, drawn from (seed, epoch) alone, so a resumed run sees
    the order an uninterrupted run would have seen; under DDP each rank takes every
    `num_replicas`-th index of it (a DistributedSampler, so Lightning does not wrap it).
    Lightning calls set_epoch at the start of every epoch. A run resumed mid-epoch skips the
    examples this rank had already trained on in that epoch (`skip`, consumed by the first
    pass only): skipping after the split, not before, is what keeps every rank's share."""

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        order += order[: self.total_size - len(order)]  # every rank the same number, as DDP needs
        skip, self.skip = self.skip, 0
        return iter(order[self.rank : self.total_size : self.num_replicas][skip:])


class _Examples(torch.utils.data.Dataset):
    def __init__(self, split: TokenizedSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split.ids)

    def __getitem__(self, i: int) -> tuple[list[int], int | None]:
        label = None if self.split.labels is None else self.split.labels[i]
        return self.split.ids[i], label


class TextDataModule(pl.LightningDataModule):
    def __init__(
        self, bundle: DataBundle, batch_size: int, eval_batch_size: int, seed: int, workers: int
    ):
        super().__init__()
        self.bundle = bundle
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.seed, self.workers = seed, workers
        self.collate = Collator(bundle.task, bundle.tokenizer.pad_id, bundle.n_outputs == 1)
        self._batches_done = 0

    def resume_mid_epoch(self, batches_done: int) -> None:
        """The next training epoch starts after the first `batches_done` batches of this
        rank's order (a checkpoint saved mid-epoch); a count of whole epochs skips nothing."""
        self._batches_done = batches_done

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        examples = _Examples(self.bundle.splits[split])
        sampler = None
        if shuffle:
            world = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
            sampler = EpochShuffle(examples, self.seed, *world)
            n_batches = -(-sampler.num_samples // self.batch_size)
            sampler.skip = self._batches_done % n_batches * self.batch_size
            self._batches_done = 0
        return DataLoader(
            examples,
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
            pin_memory=torch.cuda.is_available(),
            # Its own generator: creating an iterator draws a base seed, which must not move
            # the global generator (dropout), or a resumed run would drift from the original.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
