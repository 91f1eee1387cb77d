"""Batches: right-padded tensors, a seeded shuffle that a resumed run can continue mid-epoch,
and the loader of a split (training's DataModule, pipeline/run/datamodule.py, and evaluate's
plain loop both read through it).

Classification batches carry the index of each example's last real token (the pooled position);
causal-LM batches carry next-token targets with IGNORE_INDEX wherever there is padding.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from pipeline.data.arrays import TokenizedSplit
from pipeline.data.bundle import DataBundle

IGNORE_INDEX = -100


class Collator:
    """Right-pads a list of examples into tensors; padding never reaches the loss."""

    def __init__(self, task: str, pad_id: int, binary: bool):
        self.task, self.pad_id, self.binary = task, pad_id, binary

    def __call__(self, batch: list[tuple[list[int], Any]]) -> dict:
        """Each example: its ids, and its label (classification) or, for a language model,
        None or {"trained": which tokens the loss covers, "positions": positions restarting
        at each example of a packed row}."""
        lengths = [len(ids) for ids, _ in batch]
        width = max(lengths)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        for row, (ids, _) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        out = {
            "input_ids": input_ids,
            "lengths": torch.tensor(lengths, dtype=torch.long),
            # A plain int, counted here on the CPU so the training step never syncs for it.
            "n_tokens": sum(lengths),
        }
        if self.task != "classification":
            targets = torch.full_like(input_ids, IGNORE_INDEX)
            positions = torch.zeros_like(input_ids)
            for row, (n, (_, extra)) in enumerate(zip(lengths, batch, strict=True)):
                extra = extra or {}
                keep = torch.ones(n - 1, dtype=torch.bool)
                if extra.get("trained") is not None:
                    keep &= torch.as_tensor(extra["trained"][1:n], dtype=torch.bool)
                if extra.get("positions") is not None:
                    # No target crosses into the next example of a packed row.
                    positions[row, :n] = torch.as_tensor(extra["positions"], dtype=torch.long)
                    keep &= positions[row, 1:n] != 0
                targets[row, : n - 1] = torch.where(keep, input_ids[row, 1:n], IGNORE_INDEX)
            out["targets"] = targets
            out["n_trained"] = int((targets != IGNORE_INDEX).sum())
            if any(extra and extra.get("positions") is not None for _, extra in batch):
                out["position_ids"] = positions
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

    def __init__(self, dataset: Sized, seed: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        order += order[: self.total_size - len(order)]  # every rank the same number, as DDP needs
        skip, self.skip = self.skip, 0
        return iter(order[self.rank : self.total_size : self.num_replicas][skip:])


class _Examples(torch.utils.data.Dataset):
    """A split's rows, read from its arrays (memory-mapped when cached: a worker process
    shares the mapping, nothing is copied but the rows of its batches)."""

    def __init__(self, split: TokenizedSplit):
        self.split = split
        self.positions = split.positions

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[np.ndarray, Any]:
        split = self.split
        ids = np.asarray(split.ids[i], dtype=np.int64)
        if split.labels is not None:
            return ids, int(split.labels[i])
        return ids, {
            "trained": None if split.trained is None else np.asarray(split.trained[i], bool),
            "positions": None if self.positions is None else self.positions[i],
        }


def split_loader(
    bundle: DataBundle,
    split: str,
    batch_size: int,
    seed: int,
    workers: int,
    sampler: EpochShuffle | None = None,
) -> DataLoader:
    """The examples of `split` in batches: in order, or in `sampler`'s order."""
    return DataLoader(
        _Examples(bundle.splits[split]),
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=Collator(bundle.task, bundle.tokenizer.pad_id, bundle.n_outputs == 1),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        # Its own generator: creating an iterator draws a base seed, which must not move
        # the global generator (dropout), or a resumed run would drift from the original.
        generator=torch.Generator().manual_seed(seed),
    )
