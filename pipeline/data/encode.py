"""Records to token arrays, as fast as the tokenizer: texts go to the fast tokenizer in
batches (its Rust threads, or data.num_proc processes), and the results become flat arrays
at once; lengths, truncation, dropping and packing are array operations.

instruct: each conversation is rendered once and cut into prompt and trained pieces
(pipeline/data/chat.py's Segmenter); every piece is tokenized on its own, so a prompt's
tokens are those a prompt gets at inference and no token straddles a trained boundary.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from pipeline.data.arrays import Ragged, TokenizedSplit, pack_rows, token_dtype
from pipeline.data.chat import Segmenter
from pipeline.data.instruct import Conversation
from pipeline.data.tokenizer import TextTokenizer

# Texts a batch: large enough for the tokenizer's threads, small enough that the Python lists
# of one batch's ids stay a few MB.
BATCH = 2048


@dataclass
class Encoded:
    """A split's examples before truncation: flat ids, each example's length and, for
    instruct, per token whether the loss covers it."""

    flat: np.ndarray
    lengths: np.ndarray
    trained: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


def encode_texts(texts: Sequence[str], tokenizer: TextTokenizer, num_proc: int) -> Encoded:
    """Each text's token ids."""
    dtype = token_dtype(tokenizer.vocab_size)
    job = (_as_texts, _texts_done, (tokenizer, dtype))
    parts = list(_map(job, _batches(texts), num_proc))
    return Encoded(_cat([p[0] for p in parts], dtype), _cat([p[1] for p in parts], np.int64))


def encode_conversations(
    conversations: Sequence[Conversation],
    tokenizer: TextTokenizer,
    num_proc: int,
    segmenter: Segmenter,
    train_on_all: bool,
) -> Encoded:
    """Each conversation's ids and which of them are trained."""
    dtype = token_dtype(tokenizer.vocab_size)
    job = (_pieces, _conversations_done, (tokenizer, dtype, segmenter, train_on_all))
    parts = list(_map(job, _batches(conversations), num_proc))
    return Encoded(
        _cat([p[0] for p in parts], dtype),
        _cat([p[1] for p in parts], np.int64),
        _cat([p[2] for p in parts], np.bool_),
    )


# A job is three parts: the texts a batch gives the tokenizer (Python), what becomes of their
# encodings (numpy), and the state both read.


def _as_texts(batch: list[str], state: tuple) -> tuple[list[str], None]:
    return batch, None


def _texts_done(_: None, encodings: list, state: tuple) -> tuple[np.ndarray, np.ndarray]:
    return _flat(encodings, state[1])


def _pieces(batch: list[Conversation], state: tuple) -> tuple[list[str], list]:
    segmenter = state[2]
    pieces = [segmenter(c) for c in batch]
    return [text for p in pieces for text, _ in p], pieces


def _conversations_done(pieces: list, encodings: list, state: tuple) -> tuple:
    _, dtype, _, train_on_all = state
    flat, piece_lengths = _flat(encodings, dtype)
    piece_trained = np.fromiter((tr or train_on_all for p in pieces for _, tr in p), np.bool_)
    counts = np.fromiter(map(len, pieces), np.int64, len(pieces))
    ends = np.cumsum(counts)
    sums = np.add.reduceat(piece_lengths, ends - counts) if len(piece_lengths) else counts * 0
    lengths = np.where(counts > 0, sums, 0)
    return flat, lengths, np.repeat(piece_trained, piece_lengths)


def _flat(encodings: list, dtype) -> tuple[np.ndarray, np.ndarray]:
    ids = [e.ids for e in encodings]
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    return np.fromiter(chain.from_iterable(ids), dtype, int(lengths.sum())), lengths


def _batches(items: Sequence) -> Iterator[list]:
    for start in range(0, len(items), BATCH):
        yield list(items[start : start + BATCH])


def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def _map(job: tuple, batches: Iterator[list], num_proc: int) -> Iterator:
    """The job's result for each batch, in order. Here, the tokenizer (whose Rust threads let
    go of the GIL) encodes one batch while Python renders the next and lays out the last; or
    in num_proc forked processes, each single-threaded in the tokenizer so that they do not
    fight over the cores."""
    texts_of, done, state = job
    encode = state[0].tokenizer.encode_batch_fast
    if num_proc > 1:
        yield from _in_processes(job, batches, num_proc)
        return
    with ThreadPoolExecutor(1) as tokenizing:
        pending = None
        for batch in batches:
            texts, extra = texts_of(batch, state)
            encoded = tokenizing.submit(encode, texts)
            if pending is not None:
                yield done(pending[0], pending[1].result(), state)
            pending = extra, encoded
        if pending is not None:
            yield done(pending[0], pending[1].result(), state)


_JOB: Any = None


def _in_processes(job: tuple, batches: Iterator[list], num_proc: int) -> Iterator:
    global _JOB
    _JOB = job
    context = multiprocessing.get_context("fork")
    try:
        with context.Pool(num_proc, initializer=_quiet) as pool:
            yield from pool.imap(_whole, batches)
    finally:
        _JOB = None


def _quiet() -> None:
    # Each worker one thread in the tokenizer: the processes share the cores between them. (A
    # library setting for this process, not a setting read: the commands read the environment.)
    os.putenv("TOKENIZERS_PARALLELISM", "false")


def _whole(batch: list) -> Any:
    texts_of, done, state = _JOB
    texts, extra = texts_of(batch, state)
    return done(extra, state[0].tokenizer.encode_batch_fast(texts), state)


def starts_of(lengths: np.ndarray) -> np.ndarray:
    """Offsets (len + 1) of examples of these lengths laid end to end."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def truncated(encoded: Encoded, max_length: int, min_length: int) -> tuple[Encoded, np.ndarray]:
    """Each example cut to max_length tokens, those left shorter than min_length dropped (or
    instruct ones with nothing trained past their first token); and which examples were kept."""
    offsets = starts_of(encoded.lengths)
    kept_lengths = np.minimum(encoded.lengths, max_length)
    position = np.arange(len(encoded.flat)) - np.repeat(offsets[:-1], encoded.lengths)
    within = position < max_length
    keep = kept_lengths >= min_length
    if encoded.trained is not None:
        learned = encoded.trained & within & (position >= 1)
        per_example = np.add.reduceat(learned, offsets[:-1]) if len(learned) else keep * 0
        keep &= np.where(encoded.lengths > 0, per_example, 0) > 0
    within &= np.repeat(keep, encoded.lengths)
    trained = None if encoded.trained is None else encoded.trained[within]
    return Encoded(encoded.flat[within], kept_lengths[keep], trained, encoded.notes), keep


def as_split(
    encoded: Encoded, packing: bool, max_length: int, labels: np.ndarray | None = None
) -> TokenizedSplit:
    """The examples one a row, or (packing) consecutive examples filling max_length rows."""
    offsets = starts_of(encoded.lengths)
    trained = None if encoded.trained is None else encoded.trained.astype(np.uint8)
    if not packing:
        return TokenizedSplit(
            Ragged(encoded.flat, offsets),
            labels,
            None if trained is None else Ragged(trained, offsets),
        )
    rows = offsets[pack_rows(encoded.lengths, max_length)]
    return TokenizedSplit(
        Ragged(encoded.flat, rows),
        None,
        None if trained is None else Ragged(trained, rows),
        offsets[:-1],
    )


def concatenated(encoded: Encoded, block: int) -> Encoded:
    """data.chunking=concatenate: the documents (each ending with its end-of-text token) laid
    end to end and cut into blocks of `block` tokens, as Hugging Face's run_clm does; a last
    shorter block is kept when it has at least two tokens, something to predict."""
    total = len(encoded.flat)
    lengths = np.full(total // block, block, dtype=np.int64)
    if total % block >= 2:
        lengths = np.append(lengths, total % block)
    return Encoded(encoded.flat[: int(lengths.sum())], lengths, None, encoded.notes)


def with_eos(encoded: Encoded, eos_id: int) -> Encoded:
    """Each document followed by the end-of-text token, which teaches where a text stops."""
    ends = starts_of(encoded.lengths)[1:]
    flat = np.insert(encoded.flat, ends, eos_id).astype(encoded.flat.dtype)
    return Encoded(flat, encoded.lengths + 1, None, encoded.notes)
