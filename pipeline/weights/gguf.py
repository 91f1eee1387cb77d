"""GGUF files (llama.cpp, Ollama) read with the `gguf` package: what a file holds, its tensors
dequantized for training, and its tokenizer and chat template.

A `gpt2` file becomes our GPT (the GPT-2 tensor names of llama.cpp); the Llama family
(llama, mistral, qwen2, qwen3, phi3, gemma...) goes to transformers, which reads GGUF itself
(pipeline/model/hf.py). The tokenizer is rebuilt with the `tokenizers` library from the file's
vocabulary, merges and pre-tokenizer name, so that it splits text as llama.cpp does.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from pipeline.data.tokenizer import TextTokenizer
from pipeline.errors import UserError, first_line
from pipeline.model.gpt import GPTConfig
from pipeline.weights.gpt2 import from_hf_gpt2
from pipeline.weights.io import StateDict

MAGIC = b"GGUF"
T = TypeVar("T")
# transformers reads these with gguf_file=; gpt2 is ours. Others are refused by name.
HF_ARCHITECTURES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma",
    "gemma2",
    "gemma3",
    "stablelm",
    "starcoder2",
    "falcon",
)
# llama.cpp's name of a pre-tokenizer (tokenizer.ggml.pre) <-> the tokenizers library's: how
# text is split before the merges apply. Both sides must agree, or tokens differ.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "gpt-2": {**_BYTE_LEVEL, "use_regex": True},
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {**_BYTE_LEVEL, "use_regex": True},
        ],
    },
}
_CONTROL, _USER_DEFINED = 3, 4  # gguf.TokenType


# llama.cpp's gpt2 tensor names <-> Hugging Face GPT-2's ({i}: the block). llama.cpp keeps
# every matrix as (out, in), the transpose of GPT-2's Conv1D layout.
_GPT2_NAMES = [
    ("token_embd.", "wte."),
    ("position_embd.", "wpe."),
    ("output_norm.", "ln_f."),
    ("output.", "lm_head."),
    ("blk.{i}.attn_norm.", "h.{i}.ln_1."),
    ("blk.{i}.attn_qkv.", "h.{i}.attn.c_attn."),
    ("blk.{i}.attn_output.", "h.{i}.attn.c_proj."),
    ("blk.{i}.ffn_norm.", "h.{i}.ln_2."),
    ("blk.{i}.ffn_up.", "h.{i}.mlp.c_fc."),
    ("blk.{i}.ffn_down.", "h.{i}.mlp.c_proj."),
]
_GPT2_TRANSPOSED = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")


def gguf_to_gpt2(name: str) -> str:
    return _rename(name, 0, 1)


def gpt2_to_gguf(name: str) -> str:
    """A Hugging Face GPT-2 tensor name (without `transformer.`) in llama.cpp's naming."""
    return _rename(name, 1, 0)


def _rename(name: str, source: int, target: int) -> str:
    for names in _GPT2_NAMES:
        pattern = re.escape(names[source]).replace(re.escape("{i}"), r"(\d+)")
        match = re.match(pattern, name)
        if match:
            return names[target].format(i=next(iter(match.groups()), "")) + name[match.end() :]
    return name


def _transposed(gguf_name: str) -> bool:
    return gguf_name.endswith(_GPT2_TRANSPOSED)


@dataclass
class GGUFFile:
    """What a GGUF file holds, read without loading its tensors."""

    path: Path
    architecture: str
    metadata: dict[str, Any]
    tensor_types: Counter = field(default_factory=Counter)

    @property
    def describe(self) -> str:
        """'Q4_1 (210 tensors), F32 (61), Q8_0 (1)': what the start-up line reports."""
        parts = [f"{name} ({count})" for name, count in self.tensor_types.most_common()]
        return ", ".join(parts)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return handle.read(4) == MAGIC


def open_gguf(path: str | Path) -> Any:
    """gguf's reader on `path`; a file that is not GGUF, or is cut short, is a UserError.
    Parsing the metadata takes seconds for a large vocabulary, so a file is parsed once while
    it stays unchanged."""
    path = Path(path).resolve()
    if not is_gguf(path):
        return _reader(path, 0, 0)  # raises
    stat = path.stat()
    return _reader(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _reader(path: Path, mtime: int, size: int) -> Any:
    from gguf import GGUFReader

    if not is_gguf(path):
        raise UserError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes). Pass a "
            ".gguf file written by llama.cpp, Ollama or this pipeline's gguf export."
        )
    with parsing(path):
        return GGUFReader(path)


# What gguf's reader, and reading the values it found, raise on damaged bytes.
_DAMAGED = (ValueError, IndexError, OSError, KeyError, TypeError, OverflowError)


def _reads_gguf(read: Callable[..., T]) -> Callable[..., T]:
    """`read(path, ...)` with a damaged file at `path` reported by `parsing`."""

    @functools.wraps(read)
    def reading(path: str | Path, *args: Any, **kwargs: Any) -> T:
        with parsing(path):
            return read(path, *args, **kwargs)

    return reading


@contextlib.contextmanager
def parsing(path: Path | str) -> Iterator[None]:
    """Reading a GGUF file's structure and values: a damaged file is a UserError naming it.
    Values are decoded lazily, so this covers every read, not only opening the file."""
    try:
        yield
    except _DAMAGED as exc:
        raise UserError(
            f"{path} could not be read as GGUF ({first_line(exc)}); it is probably truncated or "
            "corrupt. Download or export it again."
        ) from None


@_reads_gguf
def inspect(path: str | Path) -> GGUFFile:
    """The architecture, metadata (without the tokenizer's arrays) and tensor types of a file;
    an architecture this pipeline cannot train is refused, naming the supported ones."""
    reader = open_gguf(path)
    metadata = {
        key: _value(f)
        for key, f in reader.fields.items()
        if not key.startswith("GGUF.") and key not in _ARRAYS
    }
    types = Counter(t.tensor_type.name for t in reader.tensors)
    architecture = str(metadata.get("general.architecture", "?"))
    if architecture != "gpt2" and architecture not in HF_ARCHITECTURES:
        raise UserError(
            f"{path} holds a {architecture!r} model, which this pipeline cannot train. It reads "
            f"GGUF files of gpt2 (as our GPT) and of {', '.join(HF_ARCHITECTURES)} (through "
            "transformers)."
        )
    return GGUFFile(Path(path), architecture, metadata, types)


_ARRAYS = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"}


def _value(f: Any) -> Any:
    value = f.contents()
    return value.tolist() if isinstance(value, np.ndarray) else value


@_reads_gguf
def read_gpt2(path: str | Path) -> tuple[GPTConfig, StateDict]:
    """A gpt2-architecture file as our GPT's shape and state dict, every tensor dequantized to
    float32."""
    from gguf.quants import dequantize

    info = inspect(path)
    if info.architecture != "gpt2":
        raise UserError(f"{path} holds a {info.architecture!r} model, not a gpt2 one.")
    reader = open_gguf(path)
    tensors = {
        t.name: torch.from_numpy(
            np.array(dequantize(t.data, t.tensor_type), dtype=np.float32, copy=True)
        ).reshape(tuple(reversed([int(n) for n in t.shape])))
        for t in reader.tensors
    }
    n_layers = int(info.get("gpt2.block_count"))
    width = int(info.get("gpt2.embedding_length"))
    vocab = tensors["token_embd.weight"].shape[0]
    cfg = GPTConfig(
        vocab_size=vocab,
        context_length=int(info.get("gpt2.context_length")),
        emb_dim=width,
        n_heads=int(info.get("gpt2.attention.head_count")),
        n_layers=n_layers,
        qkv_bias=any(bool(tensors[f"blk.{i}.attn_qkv.bias"].any()) for i in range(n_layers)),
        tie_weights="output.weight" not in tensors,
        layer_norm_eps=float(info.get("gpt2.attention.layer_norm_epsilon", 1e-5)),
    )
    hf = {gguf_to_gpt2(name): t.t() if _transposed(name) else t for name, t in tensors.items()}
    return cfg, from_hf_gpt2(hf, cfg)


@_reads_gguf
def read_tokenizer(path: str | Path) -> TextTokenizer:
    """The file's byte-level BPE tokenizer, its special tokens, and its chat template (kept in
    tokenizer_config.json, where transformers and our exports read it)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    reader = open_gguf(path)
    fields = reader.fields

    def get(key: str, default: Any = None) -> Any:
        return _value(fields[key]) if key in fields else default

    if get("tokenizer.ggml.model") != "gpt2":
        raise UserError(
            f"{path} has a {get('tokenizer.ggml.model')!r} tokenizer; this pipeline reads the "
            "byte-level BPE ones (tokenizer.ggml.model = gpt2) that GPT-2, Llama 3, Qwen and "
            "SmolLM use."
        )
    pre = get("tokenizer.ggml.pre", "gpt-2")
    if pre not in PRE_TOKENIZERS:
        raise UserError(
            f"{path} splits text with llama.cpp's {pre!r} pre-tokenizer, which this pipeline "
            f"does not know yet (it knows {', '.join(PRE_TOKENIZERS)}), so its tokens would "
            "differ from llama.cpp's."
        )
    tokens = [str(t) for t in get("tokenizer.ggml.tokens")]
    kinds = get("tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(str(m).split(" ", 1)) for m in get("tokenizer.ggml.merges", [])]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    tokenizer.pre_tokenizer = _pre_tokenizer(pre)
    tokenizer.decoder = decoders.ByteLevel()
    special = [
        AddedToken(t, special=True, normalized=False)
        for t, kind in zip(tokens, kinds, strict=True)
        if kind in (_CONTROL, _USER_DEFINED)
    ]
    tokenizer.add_special_tokens(special)
    eos = tokens[int(get("tokenizer.ggml.eos_token_id", 0))]
    pad_id = get("tokenizer.ggml.padding_token_id")
    bos_id = get("tokenizer.ggml.bos_token_id")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": eos,
        "pad_token": tokens[int(pad_id)] if pad_id is not None else eos,
        "bos_token": tokens[int(bos_id)] if bos_id is not None else None,
        "add_bos_token": bool(get("tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": None,
        "chat_template": get("tokenizer.chat_template"),
        # Kept for the GGUF export: llama.cpp knows the pre-tokenizer by this name.
        "gguf_pre_tokenizer": pre,
    }
    files = {"tokenizer_config.json": json.dumps(config, indent=2) + "\n"}
    return TextTokenizer(tokenizer, eos, config["pad_token"], files)


def _pre_tokenizer(name: str) -> Any:
    from tokenizers import Tokenizer

    # The tokenizers library builds a pre-tokenizer from its JSON form.
    holder = json.loads(Tokenizer(_empty_bpe()).to_str())
    holder["pre_tokenizer"] = PRE_TOKENIZERS[name]
    return Tokenizer.from_str(json.dumps(holder)).pre_tokenizer


def _empty_bpe() -> Any:
    from tokenizers import models

    return models.BPE()
