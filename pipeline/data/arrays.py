"""A tokenized split as flat arrays: every example's token ids one after another, and where
each example (row) starts. Rows are views into the arrays, never Python lists, so a split read
from the prepared-data cache (memory-mapped) costs the pages a batch touches, not the dataset;
DataLoader workers share the mapping.

A packed split (data.packing) is the same arrays cut into longer rows: a row is a run of
consecutive examples, and each token's position restarts at the start of its example.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class Ragged:
    """Rows of varying length: one flat array and the rows' boundaries (len(rows) + 1)."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        """The same rows (wherever each array starts)."""
        if not isinstance(other, Ragged):
            return NotImplemented
        return np.array_equal(self.lengths, other.lengths) and np.array_equal(
            self.flat[self.offsets[0] : self.offsets[-1]],
            other.flat[other.offsets[0] : other.offsets[-1]],
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def head(self, n: int) -> Ragged:
        """The first n rows (views, nothing copied)."""
        n = min(n, len(self))
        return Ragged(self.flat[: self.offsets[n]], self.offsets[: n + 1])

    def to_lists(self) -> list[list[int]]:
        return [row.tolist() for row in self]


class Positions:
    """Each token's position within its example, for the rows of a packed split: computed
    from where the examples start, not stored."""

    def __init__(self, offsets: np.ndarray, starts: np.ndarray):
        self.offsets, self.starts = offsets, starts

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        begin, end = int(self.offsets[i]), int(self.offsets[i + 1])
        lo, hi = np.searchsorted(self.starts, [begin, end])
        starts = self.starts[lo:hi]
        index = np.arange(begin, end)
        return index - starts[np.searchsorted(starts, index, side="right") - 1]


@dataclass
class TokenizedSplit:
    """ids: the token ids of each row; labels: one per row (classification); trained: per
    token, whether the loss covers it (instruct's data.train_on; all of a packed causal-LM
    split); starts: where each example starts in the flat ids (packed splits only)."""

    ids: Ragged
    labels: np.ndarray | None = None
    trained: Ragged | None = None
    starts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def positions(self) -> Positions | None:
        return None if self.starts is None else Positions(self.ids.offsets, self.starts)

    @property
    def tokens(self) -> int:
        return int(self.ids.offsets[-1])

    def head(self, n: int) -> TokenizedSplit:
        """The first n rows."""
        ids = self.ids.head(n)
        trained = None if self.trained is None else Ragged(self.trained.flat, ids.offsets)
        starts = None if self.starts is None else self.starts[self.starts < ids.offsets[-1]]
        labels = None if self.labels is None else self.labels[:n]
        return TokenizedSplit(ids, labels, trained, starts)

    def trained_targets(self) -> int:
        """How many tokens are targets of the loss: all but each row's first, less those the
        mask leaves out (and, packed, each example's first)."""
        firsts = self.starts if self.starts is not None else self.ids.offsets[:-1]
        if self.trained is None:
            return self.tokens - len(firsts)
        # Counted on the (memory-mapped) flags in place: no copy of the split's mask.
        flags = self.trained.flat
        firsts = firsts[firsts < len(flags)]
        return int(flags.sum(dtype=np.int64)) - int(flags[firsts].sum(dtype=np.int64))

    # What is stored of a split, and the dtype each is read back with.
    ARRAYS = ("ids", "offsets", "trained", "labels", "starts")

    def save(self, folder: Path) -> int:
        """The arrays as .npy files in `folder`; returns their size in bytes."""
        arrays = {
            "ids": self.ids.flat,
            "offsets": self.ids.offsets,
            "trained": None if self.trained is None else self.trained.flat,
            "labels": self.labels,
            "starts": self.starts,
        }
        size = 0
        for name, array in arrays.items():
            if array is not None:
                size += _save(folder / f"{name}.npy", np.ascontiguousarray(array))
        return size

    @classmethod
    def open(cls, folder: Path) -> TokenizedSplit:
        """The split saved in `folder`, memory-mapped (read-only)."""

        def load(name: str, required: bool = False) -> np.ndarray | None:
            path = folder / f"{name}.npy"
            return np.load(path, mmap_mode="r") if required or path.is_file() else None

        offsets = load("offsets", required=True)
        trained = load("trained")
        return cls(
            Ragged(load("ids", required=True), offsets),
            load("labels"),
            None if trained is None else Ragged(trained, offsets),
            load("starts"),
        )


def _save(path: Path, array: np.ndarray) -> int:
    # Into a folder that is renamed into place once whole (pipeline/data/cache.py).
    np.save(path, array, allow_pickle=False)
    return path.stat().st_size


def token_dtype(vocab_size: int) -> np.dtype:
    """Two bytes a token where the vocabulary allows (GPT-2's 50,257, SmolLM2's 49,152)."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def pack_rows(lengths: np.ndarray, max_length: int) -> np.ndarray:
    """Row boundaries (in examples) of data.packing: examples in order, each row filled until
    the next example would not fit."""
    bounds = [0]
    used = 0
    for i, n in enumerate(lengths.tolist()):
        if used and used + n > max_length:
            bounds.append(i)
            used = 0
        used += n
    bounds.append(len(lengths))
    return np.asarray(bounds if len(lengths) else [0], dtype=np.int64)
