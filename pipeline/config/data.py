"""conf/data/: the data set, its format and columns, the task, splits and the tokenizer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config.base import Group, LocalPath, fail
from pipeline.config.locations import (
    check_data_file,
    check_file_or_folder,
    check_folder,
    check_written_file,
    checked,
)
from pipeline.errors import UserError


class TokenizerConfig(Group):
    path: LocalPath | None = None
    """A tokenizer.json file or a directory holding one; null trains a byte-level BPE on the
    training split."""
    vocab_size: int = Field(default=8192, ge=300)
    """Vocabulary of a tokenizer trained on the data."""
    min_frequency: int = Field(default=2, ge=1)
    """A pair of tokens is merged only if it occurs at least this often."""


class FieldsConfig(Group):
    """The keys of an instruction record (data.task=instruct)."""

    instruction: str = "instruction"
    """The task the user gives."""
    input: str = "input"
    """Optional context for the task."""
    output: str = "output"
    """The answer the model learns to give."""


class SourceConfig(Group):
    """One data set of a mixture (data.datasets): its files, how they are read, and its
    share of the mixture."""

    path: LocalPath | list[LocalPath]
    """A file, a glob or a list of them, as data.path."""
    name: str | None = None
    """How the run's record names this source (default: its first file's name)."""
    format: Literal["auto", "tsv", "csv", "jsonl", "json", "text", "parquet", "arrow"] = "auto"
    """As data.format."""
    weight: float | None = Field(default=None, gt=0)
    """Its share of the mixture, relative to the other weighted sources: the mixture is as
    large as it can be without repeating an example of any of them."""
    examples: int | None = Field(default=None, gt=0)
    """Instead of a weight: exactly this many examples (drawn by seed; more than the source
    holds repeats it)."""
    text_column: str | None = None
    """As data.text_column (default: data's)."""
    label_column: str | None = None
    """As data.label_column (default: data's)."""
    fields: FieldsConfig | None = None
    """As data.fields (default: data's)."""


class DataConfig(Group):
    name: str
    """The preset's name (demo, demo_lm, tsv, csv, jsonl, text)."""
    task: Literal["classification", "causal_lm", "instruct"]
    """classification: one label per text; causal_lm: next-token prediction; instruct:
    instruction or chat records, the loss on the assistant's answers."""
    format: Literal["auto", "tsv", "csv", "jsonl", "json", "text", "parquet", "arrow"] = "auto"
    """How data.path is read: auto (from each file's extension, else its first bytes), or one
    format for every file (text: one example a line; json: one array of records; arrow: an
    Arrow IPC file or a datasets save_to_disk folder)."""
    path: LocalPath | list[LocalPath] | None = None
    """The data: a file, a glob (data/*.parquet) or a list of them, read in order; val/test
    splits come from it unless val_path/test_path are given. Or data.datasets."""
    synthetic_examples: int | None = Field(default=None, gt=0)
    """When set, data.path is generated with this many synthetic messages if it does not exist."""
    val_path: LocalPath | list[LocalPath] | None = None
    """Separate validation data, as data.path (then val_fraction is not used)."""
    test_path: LocalPath | list[LocalPath] | None = None
    """Separate test data, as data.path (then test_fraction is not used)."""
    text_column: str = "text"
    """The column (or JSON key) holding the text."""
    label_column: str | None = None
    """The column holding the label (classification)."""
    val_fraction: float = Field(ge=0.0, lt=1.0)
    """Share of data.path held out for validation, chosen by seed."""
    test_fraction: float = Field(ge=0.0, lt=1.0)
    """Share of data.path held out for testing, chosen by seed."""
    max_length: int = Field(gt=1)
    """Tokens per example (at most the model's context)."""
    long_sequences: Literal["truncate", "error"] = "truncate"
    """A text longer than max_length tokens: cut it with a warning, or refuse the data."""
    num_workers: int = Field(default=0, ge=0)
    """DataLoader worker processes."""
    template: Literal["alpaca", "chatml", "llama3", "tokenizer"] = "chatml"
    """instruct: how a conversation is written as text: alpaca (the teaching texts' '###
    Instruction / ### Input / ### Response'), chatml, llama3, or tokenizer (the pretrained
    model's own chat template)."""
    train_on: Literal["responses", "all"] = "responses"
    """instruct: the loss on the assistant turns and their end-of-turn token only, or on every
    token."""
    packing: bool = False
    """causal_lm and instruct: several examples in each max_length row, each attending only
    within itself (positions restart per example), instead of one example padded a row."""
    fields: FieldsConfig = FieldsConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    cache_dir: LocalPath | None = None
    """Where prepared data (token ids as memory-mapped arrays) is kept and found again by any
    run with the same data settings; null prepares it in memory for each run."""
    num_proc: int = Field(default=1, ge=1)
    """Processes that render and tokenize the records (1: this one, the tokenizer's own
    threads on every core)."""
    chunking: Literal["example", "concatenate"] = "example"
    """causal_lm: one example per text (cut to max_length), or concatenate: every text
    followed by the end-of-text token, joined and cut into max_length blocks."""
    datasets: list[SourceConfig] = Field(default_factory=list)
    """A mixture instead of data.path: several sources, each with its own files, format and
    columns, and a weight or an example count; mixed by seed, then split as data.path is."""
    streaming: bool = False
    """causal_lm and instruct: read, tokenize and pack the training records on the fly, never
    all in memory (for corpora larger than memory or the cache); needs trainer.max_steps. See
    docs/data.md, Streaming."""
    shuffle_buffer: int = Field(default=10_000, ge=1)
    """data.streaming: records a shard draws its next one from at random (its order is seeded
    by seed and epoch, so a resume reproduces it)."""
    streaming_val_examples: int = Field(default=1000, ge=0)
    """data.streaming without data.val_path: the first this many records of data.path are the
    validation split, and training skips them."""

    def check(self) -> None:
        if self.task == "instruct" and self.format in ("tsv", "csv", "text"):
            raise fail(
                "data.format",
                self.format,
                "auto, json, jsonl, parquet or arrow for data.task=instruct (instruction "
                "records or conversations)",
            )
        if self.packing and self.task == "classification":
            raise fail(
                "data.packing",
                True,
                "only for data.task=causal_lm or instruct (a classifier "
                "pools each example's last token)",
            )
        if self.task == "classification" and not self.label_column:
            raise fail(
                "data.label_column",
                self.label_column,
                "classification needs the name of the label column (or data.task=causal_lm)",
            )
        if self.val_fraction + self.test_fraction >= 1.0:
            raise fail(
                "data.val_fraction",
                self.val_fraction,
                f"data.val_fraction + data.test_fraction (now {self.test_fraction}) must stay "
                "below 1",
            )
        if self.chunking == "concatenate" and (self.task != "causal_lm" or self.packing):
            raise fail(
                "data.chunking",
                self.chunking,
                "only for data.task=causal_lm without data.packing (its blocks are full rows "
                "already)",
            )
        if (self.path is None) == (not self.datasets):
            raise UserError(
                "Config error: data.path is required but not set (or set together with "
                "data.datasets). Set data.path=<a file, a glob or a list of files>, or list "
                "the sources of a mixture in data.datasets, not both."
            )
        for i, source in enumerate(self.datasets):
            if (source.weight is None) == (source.examples is None):
                raise fail(
                    f"data.datasets[{i}]",
                    source.name or source.path,
                    "a weight (its share of the mixture) or an example count, one of the two",
                )
        if self.streaming:
            self._check_streaming()
        self._check_files()
        if self.cache_dir is not None:
            checked("data.cache_dir", self.cache_dir, check_folder)

    def _check_streaming(self) -> None:
        if not isinstance(self.path, str) or set("*?[") & set(self.path):  # or a mixture
            raise fail(
                "data.path",
                self.path,
                "one file with data.streaming (it is read from the start, a record at a time; "
                "join the files into one, or drop data.streaming)",
            )
        if self.task == "classification":
            raise fail(
                "data.streaming",
                True,
                "only for data.task=causal_lm or instruct (a classifier needs every label "
                "before training; its data sets fit in memory: drop data.streaming)",
            )
        if self.format in ("json", "parquet", "arrow"):
            raise fail(
                "data.format",
                self.format,
                "auto, jsonl, text, csv or tsv with data.streaming (one JSON array is read whole; "
                "write one record a line, as JSONL)",
            )
        if self.chunking == "concatenate":
            raise fail(
                "data.chunking",
                self.chunking,
                "example with data.streaming (use data.packing=true to fill the rows instead)",
            )

    def _check_files(self) -> None:
        # Here and not in the field types: a recorded run's data is also read alone
        # (evaluate), where its files may be gone and the reader says so.
        # Only data.path is generated when missing, and then it is one file.
        if self.synthetic_examples:
            if not isinstance(self.path, str) or set("*?[") & set(self.path):  # or a mixture
                raise fail(
                    "data.path",
                    self.path,
                    "one file with data.synthetic_examples (the file generated when missing); "
                    "set data.synthetic_examples=null to read a glob or a list of files",
                )
            checked("data.path", self.path, check_written_file)
        for key in ("path", "val_path", "test_path"):
            spec = getattr(self, key)
            if spec is None or (key == "path" and self.synthetic_examples):
                continue
            for entry in [spec] if isinstance(spec, str) else spec:
                checked(f"data.{key}", entry, check_data_file)
        for i, source in enumerate(self.datasets):
            for entry in [source.path] if isinstance(source.path, str) else source.path:
                checked(f"data.datasets[{i}].path", entry, check_data_file)
        if self.tokenizer.path:
            checked("data.tokenizer.path", self.tokenizer.path, check_file_or_folder)
