"""Texts to token ids: the tokenizer trained or loaded, lengths checked against
data.max_length, labels mapped to indices. The result, a DataBundle, is what the model and the
trainer need to know about the data."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from pipeline.config.data import DataConfig
from pipeline.data.conversations import rendered, template_of, tokenize_conversations
from pipeline.data.packing import pack
from pipeline.data.records import Records, load_splits
from pipeline.data.tokenizer import TextTokenizer
from pipeline.errors import UserError


@dataclass
class TokenizedSplit:
    ids: list[list[int]]
    labels: list[int] | None = None
    # instruct: per token, whether the loss covers it (data.train_on).
    trained: list[list[bool]] | None = None
    # data.packing: per token, its position within its example (restarting at 0).
    positions: list[list[int]] | None = None


@dataclass(frozen=True)
class SplitSource:
    """Where a split's examples came from, for the record."""

    path: str | None
    digest: str
    examples: int


@dataclass
class DataBundle:
    """Everything the model and the trainer need to know about the data."""

    task: str
    tokenizer: TextTokenizer
    splits: dict[str, TokenizedSplit]
    label_names: list[str] = field(default_factory=list)
    sources: dict[str, SplitSource] = field(default_factory=dict)

    @property
    def n_outputs(self) -> int | None:
        """Head width: None for a language model, 1 for binary, else the class count."""
        if self.task != "classification":
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
    if cfg.task == "instruct":
        tokenizer = chat_tokenizer(cfg, tokenizer)
        out = {}
        for name, records in splits.items():
            ids, trained = tokenize_conversations(records.conversations, cfg, tokenizer)
            out[name] = _packed(ids, trained, cfg)
        return DataBundle(cfg.task, tokenizer, out)
    if cfg.task == "classification" and label_names is None:
        label_names = sorted(set(splits["train"].labels or []))
        if len(label_names) < 2:
            raise UserError(
                f"The training split has {len(label_names)} distinct label(s) in column "
                f"{cfg.label_column!r}{_of(splits['train'])}; classification needs at least 2. "
                "Check data.label_column, or use data.task=causal_lm for unlabelled text."
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
            out[name] = _packed(ids, [[True] * len(seq) for seq in ids], cfg)
            continue
        keep = [i for i, seq in enumerate(ids) if seq]
        unknown = sorted({records.labels[i] for i in keep} - set(label_index))
        if unknown:
            known = [*label_names[:10], *(["..."] if len(label_names) > 10 else [])]
            raise UserError(
                f"The {name} split{_of(records)} has labels not seen in training: "
                f"{unknown[:5]}. Known labels: {known}. Fix the data, or give every label "
                "enough examples that the split by seed puts some in training."
            )
        out[name] = TokenizedSplit(
            [ids[i][: cfg.max_length] for i in keep],
            [label_index[records.labels[i]] for i in keep],
        )
    return DataBundle(cfg.task, tokenizer, out, list(label_names or []))


def _of(records: Records) -> str:
    """' of <file>' for a message about a split, when the split came from a file."""
    return f" of {records.source}" if records.source else ""


def _packed(ids: list[list[int]], trained: list[list[bool]], cfg: DataConfig) -> TokenizedSplit:
    """The split as one example a row, or (data.packing) several examples a row."""
    if not cfg.packing:
        return TokenizedSplit(ids, trained=None if cfg.task == "causal_lm" else trained)
    rows, masks, positions = pack(ids, trained, cfg.max_length)
    return TokenizedSplit(rows, trained=masks, positions=positions)


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


def build_tokenizer(cfg: DataConfig, train: Records) -> TextTokenizer:
    if cfg.tokenizer.path:
        return TextTokenizer.load(cfg.tokenizer.path)
    texts, special = train.texts, ()
    if cfg.task == "instruct":
        template = template_of(cfg, None)
        texts, special = rendered(train.conversations, template), template.special_tokens
    t = cfg.tokenizer
    return TextTokenizer.train(texts, t.vocab_size, t.min_frequency, special)


def chat_tokenizer(cfg: DataConfig, tokenizer: TextTokenizer) -> TextTokenizer:
    """The tokenizer with the chat template it is trained with (saved with the model)."""
    template = template_of(cfg, tokenizer)
    return tokenizer.with_chat_template(template.jinja, template.end_of_turn)


def build_data(
    cfg: DataConfig,
    seed: int,
    tokenizer: TextTokenizer | None = None,
    label_names: list[str] | None = None,
) -> DataBundle:
    splits = load_splits(cfg, seed)
    tokenizer = tokenizer or build_tokenizer(cfg, splits["train"])
    bundle = tokenize(splits, cfg, tokenizer, label_names)
    bundle.sources = {
        name: SplitSource(records.source, records.digest(), len(records.texts))
        for name, records in splits.items()
    }
    return bundle
