"""A mixture of data sets (data.datasets): each source read with its own files, format and
columns, drawn by seed to its share, and laid end to end into one set of records, which is then
split into train, validation and test as data.path is.

A source with `examples: N` gives exactly N (cycling through a seeded order of its records when
it holds fewer). The weighted sources share what is left in proportion to their weights: the
mixture is as large as it can be without repeating any of them, so the source that runs out
first at its share sets the size (Hugging Face's `interleave_datasets` calls this
"first_exhausted"); each then gives round(share x size) of its records.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pipeline.config.data import DataConfig, SourceConfig
from pipeline.data.reading import data_files
from pipeline.data.records import Records, concatenated, read_records, subset


@dataclass(frozen=True)
class Part:
    """What one source gave the mixture, for the record."""

    name: str
    source: str
    digest: str
    examples: int
    share: float


def mixed(cfg: DataConfig, seed: int) -> tuple[Records, list[Part]]:
    """The sources' records drawn to their shares and joined, and what each gave."""
    read = [read_records(source.path, _as_data(cfg, source)) for source in cfg.datasets]
    counts = _counts(cfg.datasets, [len(r.texts) for r in read])
    total = sum(counts)
    picked, parts = [], []
    for i, (source, records, count) in enumerate(zip(cfg.datasets, read, counts, strict=True)):
        order = list(range(len(records.texts)))
        random.Random(f"mixture-{seed}-{i}").shuffle(order)
        chosen = [order[k % len(order)] for k in range(count)]
        part = subset(records, chosen)
        picked.append(part)
        name = source.name or data_files(source.path)[0].stem
        parts.append(Part(name, part.source or "", part.digest(), count, count / total))
    return concatenated(picked, "; ".join(p.source for p in parts)), parts


def _counts(sources: list[SourceConfig], sizes: list[int]) -> list[int]:
    weights = {i: s.weight for i, s in enumerate(sources) if s.weight is not None}
    counts = [s.examples or 0 for s in sources]
    if weights:
        total_weight = sum(weights.values())
        size = min(sizes[i] * total_weight / w for i, w in weights.items())
        for i, w in weights.items():
            counts[i] = min(sizes[i], round(w / total_weight * size))
    return counts


def _as_data(cfg: DataConfig, source: SourceConfig) -> DataConfig:
    """The data settings with this source's own format and columns."""
    update = {"format": source.format}
    for key in ("text_column", "label_column", "fields"):
        if getattr(source, key) is not None:
            update[key] = getattr(source, key)
    return cfg.model_copy(update=update)
