"""What the model and the trainer need to know about the data: the tokenizer, the tokenized
splits, the label names and where the examples came from (pipeline/data/preparation.py makes
it; pipeline/data/cache.py saves and opens it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.arrays import TokenizedSplit
from pipeline.data.tokenizer import TextTokenizer


@dataclass(frozen=True)
class SplitSource:
    """Where a split's examples came from, for the record."""

    path: str | None
    digest: str
    examples: int
    # A mixture's source (data.datasets): its share of the mixed examples.
    share: float | None = None


@dataclass
class DataBundle:
    """Everything the model and the trainer need to know about the data."""

    task: str
    tokenizer: TextTokenizer
    splits: dict[str, TokenizedSplit]
    label_names: list[str] = field(default_factory=list)
    sources: dict[str, SplitSource] = field(default_factory=dict)
    # Warnings about the data (texts cut, conversations left out), printed by every run that
    # uses it, cached or not.
    notes: list[str] = field(default_factory=list)
    # The cache folder it was opened from, and the size of its arrays.
    cache: Path | None = None
    cache_bytes: int = 0

    def describe(self, files: str = "") -> str:
        """One line for the run's summary: the splits' sizes, and where they were read from
        (`files`: what was read, as '3 files (parquet)')."""
        sizes = ", ".join(
            f"{len(split):,} {name} rows ({split.tokens:,} tokens)"
            for name, split in self.splits.items()
        )
        where = "prepared in memory"
        if self.cache is not None:
            where = f"cache {self.cache} ({self.cache_bytes / 1e6:.1f} MB)"
        paths = sorted({s.path for s in self.sources.values() if s.path})
        read = f", {files}," if files else ""
        read += f" from {'; '.join(paths)}" if paths else ""
        return f"Data{read}: {sizes}; {where}."

    @property
    def n_outputs(self) -> int | None:
        """Head width: None for a language model, 1 for binary, else the class count."""
        if self.task != "classification":
            return None
        return 1 if len(self.label_names) == 2 else len(self.label_names)
