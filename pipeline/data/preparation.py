"""Texts to token ids: the records read and split, the tokenizer trained or loaded, lengths
checked against data.max_length, labels mapped to indices; opened from the prepared-data cache
when a run with the same settings prepared them before."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from pipeline.config.data import DataConfig
from pipeline.data.arrays import TokenizedSplit
from pipeline.data.bundle import DataBundle, SplitSource
from pipeline.data.chat import Segmenter
from pipeline.data.conversations import chat_tokenizer, conversation_notes, rendered, template_of
from pipeline.data.demo import ensure_synthetic
from pipeline.data.encode import (
    Encoded,
    as_split,
    concatenated,
    encode_conversations,
    encode_texts,
    truncated,
    with_eos,
)
from pipeline.data.mixture import mixed
from pipeline.data.reading import describe
from pipeline.data.records import Records, load_splits, read_records
from pipeline.data.tokenizer import TextTokenizer
from pipeline.errors import UserError


def tokenize(
    splits: dict[str, Records],
    cfg: DataConfig,
    tokenizer: TextTokenizer,
    label_names: list[str] | None = None,
) -> DataBundle:
    """Token ids truncated to data.max_length; labels mapped to indices of `label_names`
    (taken from the training split, sorted, when not given). Warnings go to bundle.notes."""
    if cfg.task == "instruct":
        tokenizer = chat_tokenizer(cfg, tokenizer)
        out, notes = _conversations(splits, cfg, tokenizer)
        return DataBundle(cfg.task, tokenizer, out, notes=notes)
    if cfg.task == "classification" and label_names is None:
        label_names = sorted(set(splits["train"].labels or []))
        if len(label_names) < 2:
            raise UserError(
                f"The training split has {len(label_names)} distinct label(s) in column "
                f"{cfg.label_column!r}{_of(splits['train'])}; classification needs at least 2. "
                "Check data.label_column, or use data.task=causal_lm for unlabelled text."
            )
    encoded = {
        name: encode_texts(records.texts, tokenizer, cfg.num_proc)
        for name, records in splits.items()
    }
    if cfg.task == "causal_lm":
        encoded = {name: with_eos(e, tokenizer.eos_id) for name, e in encoded.items()}
    notes = [] if cfg.chunking == "concatenate" else check_lengths(encoded, cfg)
    out: dict[str, TokenizedSplit] = {}
    for name, records in splits.items():
        if cfg.task == "causal_lm":
            if cfg.chunking == "concatenate":
                chunks = concatenated(encoded[name], cfg.max_length)
                out[name] = as_split(chunks, False, cfg.max_length)
            else:
                kept, _ = truncated(encoded[name], cfg.max_length, 2)
                out[name] = as_split(kept, cfg.packing, cfg.max_length)
            continue
        kept, keep = truncated(encoded[name], cfg.max_length, 1)
        out[name] = as_split(kept, False, cfg.max_length, _labels(records, keep, name, label_names))
    return DataBundle(cfg.task, tokenizer, out, list(label_names or []), notes=notes)


def _labels(records: Records, keep, name: str, label_names: list[str]) -> np.ndarray:
    labels = [label for label, kept in zip(records.labels or [], keep, strict=True) if kept]
    index = {label: i for i, label in enumerate(label_names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        known = [*label_names[:10], *(["..."] if len(label_names) > 10 else [])]
        raise UserError(
            f"The {name} split{_of(records)} has labels not seen in training: "
            f"{unknown[:5]}. Known labels: {known}. Fix the data, or give every label "
            "enough examples that the split by seed puts some in training."
        )
    return np.fromiter((index[label] for label in labels), np.int64, len(labels))


def _conversations(splits: dict[str, Records], cfg: DataConfig, tokenizer: TextTokenizer):
    template = template_of(cfg, tokenizer)
    special = {"eos_token": template.end_of_turn, "bos_token": tokenizer.config.get("bos_token")}
    segmenter = Segmenter(template.jinja, template.end_of_turn, **special)
    out, notes = {}, []
    for name, records in splits.items():
        encoded = encode_conversations(
            records.conversations or [], tokenizer, cfg.num_proc, segmenter, cfg.train_on == "all"
        )
        kept, keep = truncated(encoded, cfg.max_length, 1)
        notes += conversation_notes(cfg, len(keep), int((~keep).sum()), encoded.lengths)
        out[name] = as_split(kept, cfg.packing, cfg.max_length)
    return out, notes


def _of(records: Records) -> str:
    """' of <file>' for a message about a split, when the split came from a file."""
    return f" of {records.source}" if records.source else ""


def check_lengths(encoded: dict[str, Encoded], cfg: DataConfig) -> list[str]:
    """Texts longer than data.max_length tokens (counting the end-of-text token a language
    model adds) are cut with a warning, or refused with data.long_sequences=error."""
    long = {name: np.flatnonzero(e.lengths > cfg.max_length) for name, e in encoded.items()}
    count = sum(map(len, long.values()))
    if not count:
        return []
    longest = max(int(encoded[n].lengths[idx].max()) for n, idx in long.items() if len(idx))
    where = ", ".join(f"{len(idx)} in {name}" for name, idx in long.items() if len(idx))
    summary = (
        f"{count} texts ({where}) are longer than data.max_length={cfg.max_length} tokens "
        f"(the longest has {longest})"
    )
    if cfg.long_sequences == "error":
        name, idx = next((n, idx) for n, idx in long.items() if len(idx))
        raise UserError(
            f"{summary}; the first is example {idx[0]} of the {name} split. Raise "
            f"data.max_length (at most model.context_length), shorten those texts, or set "
            "data.long_sequences=truncate to cut them."
        )
    return [f"{summary}; they are truncated. data.long_sequences=error refuses them."]


def build_tokenizer(cfg: DataConfig, train: Records) -> TextTokenizer:
    if cfg.tokenizer.path:
        return TextTokenizer.load(cfg.tokenizer.path)
    texts, special = train.texts, ()
    if cfg.task == "instruct":
        template = template_of(cfg, None)
        texts, special = rendered(train.conversations, template), template.special_tokens
    t = cfg.tokenizer
    return TextTokenizer.train(texts, t.vocab_size, t.min_frequency, special)


def build_data(
    cfg: DataConfig,
    seed: int,
    tokenizer: TextTokenizer | None = None,
    label_names: list[str] | None = None,
) -> DataBundle:
    """The data prepared for a run: opened from data.cache_dir when it was prepared before
    with the same settings, else prepared (and cached). Its warnings are printed either way."""
    ensure_synthetic(cfg)
    if cfg.streaming:
        bundle = prepare_streaming(cfg, seed, tokenizer)
    elif cfg.cache_dir is None:
        bundle = prepare(cfg, seed, tokenizer, label_names)
    else:
        from pipeline.data.cache import cached

        bundle = cached(cfg, seed, tokenizer, label_names, prepare)
    for note in bundle.notes:
        print(f"warning: {note}", file=sys.stderr)
    if cfg.streaming:
        print(bundle.describe())
    else:
        read = f"{len(cfg.datasets)} sources" if cfg.datasets else describe(cfg.path, cfg.format)
        print(bundle.describe(read))
    return bundle


def prepare(
    cfg: DataConfig,
    seed: int,
    tokenizer: TextTokenizer | None = None,
    label_names: list[str] | None = None,
) -> DataBundle:
    """The records read and split, the tokenizer trained or taken, the splits tokenized."""
    records, parts = mixed(cfg, seed) if cfg.datasets else (None, [])
    splits = load_splits(cfg, seed, records)
    tokenizer = tokenizer or build_tokenizer(cfg, splits["train"])
    bundle = tokenize(splits, cfg, tokenizer, label_names)
    bundle.sources = {
        name: SplitSource(records.source, records.digest(), len(records.texts))
        for name, records in splits.items()
    }
    # Each source of a mixture as its own dataset of the run, with its share.
    for part in parts:
        bundle.sources[f"mixture/{part.name}"] = SplitSource(
            part.source, part.digest, part.examples, round(part.share, 6)
        )
    return bundle


# data.streaming: records of the head of data.path a tokenizer trained on the data learns from,
# and training records tokenized as a sample of the stream (the loss scale, calibration).
TOKENIZER_RECORDS, SAMPLE_RECORDS = 20_000, 1000


def prepare_streaming(
    cfg: DataConfig, seed: int, tokenizer: TextTokenizer | None = None
) -> DataBundle:
    """data.streaming: validation (data.val_path, else the head of data.path) and test
    (data.test_path, else none) prepared as arrays; training left to the stream, of which
    only the head is read here. Not cached: the small splits take seconds."""
    from pipeline.data.stream_source import head
    from pipeline.data.streaming import StreamingBundle, source_of

    held = 0 if cfg.val_path else cfg.streaming_val_examples
    first = head(cfg, max(held + SAMPLE_RECORDS, TOKENIZER_RECORDS))
    if len(first) <= held:
        raise UserError(
            f"data.streaming holds out the first data.streaming_val_examples={held} records "
            f"of {cfg.path} for validation, and the file has only {len(first)}: none would be "
            "left to train on. Lower data.streaming_val_examples, or give data.val_path."
        )
    splits = {
        "train": _records(cfg, first[held : held + SAMPLE_RECORDS]),
        "val": read_records(cfg.val_path, cfg) if cfg.val_path else _records(cfg, first[:held]),
        "test": read_records(cfg.test_path, cfg) if cfg.test_path else _records(cfg, []),
    }
    tokenizer = tokenizer or build_tokenizer(cfg, _records(cfg, first[:TOKENIZER_RECORDS]))
    prepared = tokenize(splits, cfg, tokenizer)
    bundle = StreamingBundle(
        prepared.task, prepared.tokenizer, prepared.splits, notes=prepared.notes
    )
    bundle.stream = source_of(cfg, seed, prepared.tokenizer, held)
    bundle.sources = {
        name: SplitSource(records.source, records.digest(), len(records.texts))
        for name, records in splits.items()
        if name != "train"
    }
    bundle.sources["train"] = SplitSource(str(Path(cfg.path).resolve()), _stamp(cfg.path), 0)
    return bundle


def _records(cfg: DataConfig, records: list) -> Records:
    source = str(Path(cfg.path).resolve())
    if cfg.task == "instruct":
        return Records.of_conversations(records, source)
    return Records(list(records), None, source=source)


def _stamp(path: str) -> str:
    """A streamed file's identity for the record without reading it: its size and mtime."""
    stat = Path(path).stat()
    return hashlib.sha256(f"{stat.st_size}-{stat.st_mtime_ns}".encode()).hexdigest()[:16]
