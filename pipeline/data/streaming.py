"""data.streaming: the training examples read, tokenized and (data.packing) packed on the fly,
batch by batch, never all in memory; the same example tuples as the prepared path's, batched
by the same Collator.

- Shards: training record j goes to shard j % (world_size * workers), the shard of rank r's
  DataLoader worker w being r * workers + w; each shard reads the file and keeps its own.
  In a pass (an epoch of the stream) every record is seen once, by one shard.
- Order: each shard's pass goes through a shuffle buffer (data.shuffle_buffer records)
  seeded by (seed, pass, shard); a shard that reaches the end of its records starts its next
  pass, so the stream has no end and every rank yields as many batches as it is asked for:
  the run's length, trainer.max_steps (times accumulate_grad_batches), the same on every
  rank, as DDP needs.
- Position: every batch carries its shard's position after it, [shard, pass, records of the
  pass consumed]; the run's callback keeps the last trained one per shard in the checkpoint,
  and a resumed stream replays the pass's order, skips the consumed records without
  tokenizing them, and continues with the very rows the uninterrupted run would have seen
  (a packed row always starts at a record, so packing restarts where the row did).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.config.data import DataConfig
from pipeline.data.bundle import DataBundle
from pipeline.data.chat import Segmenter
from pipeline.data.conversations import template_of
from pipeline.data.encode import Encoded, encode_conversations, encode_texts, truncated, with_eos
from pipeline.data.loader import Collator
from pipeline.data.stream_source import pass_order
from pipeline.data.tokenizer import TextTokenizer
from pipeline.errors import UserError

# Records tokenized at a time: enough for the tokenizer's threads, a few MB of ids at most.
TOKENIZE_BATCH = 512
# The key of a batch that holds its shard's position after it.
POSITION_KEY = "stream_position"

Example = tuple[np.ndarray, dict[str, Any]]


@dataclass
class StreamSource:
    """What a shard needs to stream the training records (picklable, for worker processes)."""

    cfg: DataConfig
    seed: int
    tokenizer: TextTokenizer
    skip: int
    """Records at the head of data.path held out (validation), never trained on."""
    segmenter: Segmenter | None = None

    def encode(self, records: list[Any]) -> tuple[Encoded, np.ndarray]:
        """A batch of records as the prepared path encodes them, cut to data.max_length; and
        which records were kept (too short ones are dropped, as there)."""
        cfg, tokenizer = self.cfg, self.tokenizer
        if cfg.task == "instruct":
            assert self.segmenter is not None
            encoded = encode_conversations(
                records, tokenizer, 1, self.segmenter, cfg.train_on == "all"
            )
            return truncated(encoded, cfg.max_length, 1)
        encoded = with_eos(encode_texts(records, tokenizer, 1), tokenizer.eos_id)
        return truncated(encoded, cfg.max_length, 2)


def source_of(cfg: DataConfig, seed: int, tokenizer: TextTokenizer, skip: int) -> StreamSource:
    """The stream of a prepared bundle's tokenizer (instruct: its chat tokenizer)."""
    segmenter = None
    if cfg.task == "instruct":
        template = template_of(cfg, tokenizer)
        special = {
            "eos_token": template.end_of_turn,
            "bos_token": tokenizer.config.get("bos_token"),
        }
        segmenter = Segmenter(template.jinja, template.end_of_turn, **special)
    return StreamSource(cfg, seed, tokenizer, skip, segmenter)


@dataclass
class StreamingBundle(DataBundle):
    """A bundle whose "train" split is only a sample (the loss scale, sparsity's calibration):
    training reads `stream`."""

    stream: StreamSource | None = None
    examples_note: str = ""

    def describe(self) -> str:
        sizes = ", ".join(
            f"{len(split):,} {name} rows ({split.tokens:,} tokens)"
            for name, split in self.splits.items()
            if name != "train"
        )
        assert self.stream is not None
        return f"Data: training streamed from {self.stream.cfg.path}{self.examples_note}; {sizes}."


def shard_rows(
    source: StreamSource, shard: int, n_shards: int, epoch: int = 0, consumed: int = 0
) -> Iterator[tuple[Example, int, int]]:
    """A shard's rows without end, pass after pass, from `consumed` records into pass `epoch`;
    each with the shard's position after it (pass, records consumed)."""
    cfg = source.cfg
    while True:
        order = islice(
            pass_order(cfg, source.seed, source.skip, shard, n_shards, epoch), consumed, None
        )
        rows = _packed(source, order, consumed) if cfg.packing else _single(source, order, consumed)
        produced = False
        for example, after in rows:
            produced = True
            yield example, epoch, after
        if not produced and consumed == 0:
            raise UserError(
                f"data.streaming: shard {shard} of {n_shards} (ranks times data.num_workers) "
                f"got no training example from {cfg.path}: the file has too few records "
                f"(after the {source.skip} held out for validation, see "
                "data.streaming_val_examples). Use a larger file, fewer devices or workers."
            )
        epoch, consumed = epoch + 1, 0


def _encoded_batches(source: StreamSource, order: Iterator[Any], start: int):
    """(record index in the pass, ids, trained) of each kept example, tokenized in batches."""
    index = start
    while batch := list(islice(order, TOKENIZE_BATCH)):
        encoded, keep = source.encode(batch)
        keep_index = (index + np.flatnonzero(keep)).tolist()
        offsets = np.zeros(len(encoded.lengths) + 1, dtype=np.int64)
        np.cumsum(encoded.lengths, out=offsets[1:])
        for j, i in enumerate(keep_index):
            lo, hi = offsets[j], offsets[j + 1]
            trained = None if encoded.trained is None else encoded.trained[lo:hi]
            yield i, encoded.flat[lo:hi], trained
        index += len(batch)


def _single(
    source: StreamSource, order: Iterator[Any], start: int
) -> Iterator[tuple[Example, int]]:
    for index, ids, trained in _encoded_batches(source, order, start):
        extra = {"trained": None if trained is None else trained.astype(bool), "positions": None}
        yield (ids.astype(np.int64), extra), index + 1


def _packed(
    source: StreamSource, order: Iterator[Any], start: int
) -> Iterator[tuple[Example, int]]:
    """Greedy packing as pack_rows does it: examples in order, a row filled until the next
    example would not fit; a row's position is the record the next row starts at."""
    max_length, instruct = source.cfg.max_length, source.cfg.task == "instruct"
    row: list[tuple[np.ndarray, np.ndarray | None]] = []
    used, last = 0, start
    for index, ids, trained in _encoded_batches(source, order, start):
        if used and used + len(ids) > max_length:
            yield _row(row, instruct), index
            row, used = [], 0
        row.append((ids, trained))
        used += len(ids)
        last = index + 1
    if row:
        yield _row(row, instruct), last


def _row(parts: list[tuple[np.ndarray, np.ndarray | None]], instruct: bool) -> Example:
    ids = np.concatenate([p[0] for p in parts]).astype(np.int64)
    positions = np.concatenate([np.arange(len(p[0])) for p in parts])
    trained = np.concatenate([p[1] for p in parts]).astype(bool) if instruct else None
    return ids, {"trained": trained, "positions": positions}


@dataclass
class StreamPlan:
    """One rank's share of the run: which batches it still yields and where each shard is."""

    rank: int
    world_size: int
    workers: int
    total_batches: int
    """Batches of the whole run on this rank (max_steps times accumulate_grad_batches)."""
    batches_done: int = 0
    positions: dict[int, tuple[int, int]] = field(default_factory=dict)
    """shard -> (pass, records consumed), from the checkpoint of a resumed run."""


class StreamingDataset(IterableDataset):
    """Collated training batches of one rank: DataLoader worker k yields this rank's batches
    done + k, done + k + workers, ... (the DataLoader takes them round-robin), each from the
    shard of its batch index modulo the workers, so a resume keeps every shard's batches."""

    def __init__(self, source: StreamSource, plan: StreamPlan, batch_size: int, collator: Collator):
        self.source, self.plan, self.batch_size, self.collator = source, plan, batch_size, collator

    def __len__(self) -> int:
        return self.plan.total_batches

    def __iter__(self) -> Iterator[dict]:
        plan = self.plan
        info = get_worker_info()
        workers, k = (info.num_workers, info.id) if info else (1, 0)
        if workers != max(plan.workers, 1):
            raise RuntimeError(f"planned {plan.workers} workers, running {workers}")
        first = plan.batches_done + k
        local = first % workers
        shard, n_shards = plan.rank * workers + local, plan.world_size * workers
        epoch, consumed = plan.positions.get(shard, (0, 0))
        rows = shard_rows(self.source, shard, n_shards, epoch, consumed)
        for _ in range(first, plan.total_batches, workers):
            batch = list(islice(rows, self.batch_size))
            out = self.collator([example for example, _, _ in batch])
            _, epoch, consumed = batch[-1]
            out[POSITION_KEY] = [shard, epoch, consumed]
            yield out


def stream_loader(
    bundle: StreamingBundle, plan: StreamPlan, batch_size: int, seed: int
) -> torch.utils.data.DataLoader:
    """The training batches of one rank, read from the stream."""
    assert bundle.stream is not None
    collator = Collator(bundle.task, bundle.tokenizer.pad_id, bundle.n_outputs == 1)
    return torch.utils.data.DataLoader(
        StreamingDataset(bundle.stream, plan, batch_size, collator),
        batch_size=None,
        num_workers=plan.workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),
    )
