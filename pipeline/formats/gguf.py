"""export/gguf/: model-<type>.gguf for each of export.gguf.types, written with the gguf
package's writer and quantizers, which llama.cpp and Ollama run; an Ollama Modelfile beside
them (modelfile.py).

Our GPT is written as llama.cpp's `gpt2` architecture (every bias present: zeros where our
model has none); a Hugging Face Llama or Mistral as `llama`, with the query and key rows
permuted into llama.cpp's rotary layout (ggml pairs consecutive values, Hugging Face rotates
halves), as llama.cpp's own converter does; a Qwen2 as `qwen2`. The tokenizer's vocabulary,
merges, special tokens and chat template go into the file, so llama.cpp tokenizes as we do.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data.tokenizer import TextTokenizer
from pipeline.errors import UserError
from pipeline.files import atomic_write
from pipeline.model.contract import Model
from pipeline.weights.gguf import PRE_TOKENIZERS, gpt2_to_gguf
from pipeline.weights.gpt2 import to_hf_gpt2

# export.gguf.types -> (tensor type of the matrices, general.file_type)
TYPES = {
    "f32": ("F32", 0),
    "f16": ("F16", 1),
    "bf16": ("BF16", 32),
    "q8_0": ("Q8_0", 7),
    "q4_0": ("Q4_0", 2),
}
_LLAMA_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LLAMA_BLOCK = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# Hugging Face model_type -> llama.cpp architecture (Mistral's layers are Llama's).
_HF_ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}


def save_gguf(
    model: Model, tokenizer: TextTokenizer | None, directory: Path, types: Iterable[str]
) -> list[Path]:
    """model-<type>.gguf for each type; returns the files written."""
    if not model.is_lm:
        raise UserError(
            "export.formats includes gguf, but this model is a classifier; llama.cpp and Ollama "
            "serve language models. Export a classifier as hf or onnx."
        )
    if tokenizer is None:
        raise UserError("A GGUF file carries its tokenizer, and this model has none to write.")
    arch, keys, tensors = _gpt2(model) if model.arch == "gpt" else _hf(model)
    vocab = _vocabulary(tokenizer)
    written = []
    for name in types:
        path = directory / f"model-{name}.gguf"
        atomic_write(path, lambda tmp, n=name: _write(tmp, arch, keys, tensors, vocab, n))
        written.append(path)
    return written


def _gpt2(model: Model) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    cfg = model.cfg
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    hf = {k.removeprefix("transformer."): v for k, v in to_hf_gpt2(state, cfg).items()}
    tensors = {gpt2_to_gguf(name): t.t() if name.endswith(_CONV1D) else t for name, t in hf.items()}
    keys = {
        "context_length": cfg.context_length,
        "embedding_length": cfg.emb_dim,
        "block_count": cfg.n_layers,
        "feed_forward_length": 4 * cfg.emb_dim,
        "attention.head_count": cfg.n_heads,
        "attention.layer_norm_epsilon": cfg.layer_norm_eps,
    }
    return "gpt2", keys, tensors


_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _hf(model: Model) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    config = model.hf.config
    arch = _HF_ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise UserError(
            f"GGUF export writes Llama, Mistral and Qwen2 models (and our GPT); this one is a "
            f"{config.model_type!r}. Export it as hf and convert it with llama.cpp's "
            "convert_hf_to_gguf.py."
        )
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    tensors = {}
    for name, tensor in model.hf.state_dict().items():
        tensor = tensor.detach().float().cpu()
        if arch == "llama" and ".q_proj." in name:
            tensor = _rotary_rows(tensor, heads)
        elif arch == "llama" and ".k_proj." in name:
            tensor = _rotary_rows(tensor, kv_heads)
        tensors[_llama_name(name)] = tensor
    if getattr(config, "tie_word_embeddings", False):
        tensors.pop("output.weight", None)
    keys = {
        "context_length": config.max_position_embeddings,
        "embedding_length": config.hidden_size,
        "block_count": config.num_hidden_layers,
        "feed_forward_length": config.intermediate_size,
        "attention.head_count": heads,
        "attention.head_count_kv": kv_heads,
        "attention.layer_norm_rms_epsilon": config.rms_norm_eps,
        "rope.dimension_count": head_dim,
        "rope.freq_base": float(getattr(config, "rope_theta", None) or _rope_theta(config)),
        "vocab_size": config.vocab_size,
    }
    return arch, keys, tensors


def _rope_theta(config: Any) -> float:
    # transformers 5 keeps it in rope_parameters.
    return (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)


def _llama_name(name: str) -> str:
    if name in _LLAMA_NAMES:
        return _LLAMA_NAMES[name]
    _, _, i, rest = name.split(".", 3)  # model.layers.<i>.<module>.<weight|bias>
    module, _, kind = rest.rpartition(".")
    return f"blk.{i}.{_LLAMA_BLOCK[module]}.{kind}"


def _rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face's rotate-half row order -> ggml's interleaved pairs, per head (llama.cpp's
    convert_hf_to_gguf permute; transformers undoes it when it reads GGUF)."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _vocabulary(tokenizer: TextTokenizer) -> dict[str, Any]:
    """The tokenizer as llama.cpp's byte-level BPE metadata."""
    spec = json.loads(tokenizer.tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise UserError("GGUF export writes byte-level BPE tokenizers; this one is not BPE.")
    config = tokenizer.config
    pre = config.get("gguf_pre_tokenizer") or next(
        (name for name, p in PRE_TOKENIZERS.items() if _same(p, spec["pre_tokenizer"])), None
    )
    if pre is None:
        raise UserError(
            "The tokenizer splits text with a pre-tokenizer llama.cpp does not know by name "
            f"(it knows {', '.join(PRE_TOKENIZERS)} here), so llama.cpp would tokenize "
            "differently. Export as hf instead."
        )
    size = tokenizer.tokenizer.get_vocab_size(with_added_tokens=True)
    tokens = [tokenizer.tokenizer.id_to_token(i) for i in range(size)]
    special = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    bos = config.get("bos_token")
    return {
        "pre": pre,
        "tokens": tokens,
        "types": [3 if t in special else 1 for t in tokens],
        "merges": merges,
        "eos": tokenizer.eos_id,
        "pad": tokenizer.pad_id,
        "bos": tokenizer.tokenizer.token_to_id(bos) if isinstance(bos, str) else None,
        "chat_template": config.get("chat_template"),
    }


def _same(known: dict, actual: dict | None) -> bool:
    """A known pre-tokenizer's JSON is contained in the tokenizer's (which adds defaults)."""
    if actual is None or isinstance(known, str | int | float | bool):
        return known == actual
    if isinstance(known, list):
        return len(known) == len(actual) and all(map(_same, known, actual))
    return all(k in actual and _same(v, actual[k]) for k, v in known.items())


def _write(
    path: Path,
    arch: str,
    keys: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    vocab: dict[str, Any],
    type_name: str,
) -> None:
    import logging

    import gguf

    logging.getLogger("gguf").setLevel(logging.WARNING)  # a line per file written otherwise
    matrix_type, file_type = TYPES[type_name]
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(f"{arch} fine-tuned with gpt-finetune-pipeline")
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in keys.items():
        _add(writer, f"{arch}.{key}", value)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    writer.add_eos_token_id(vocab["eos"])
    writer.add_pad_token_id(vocab["pad"])
    if vocab["bos"] is not None:
        writer.add_bos_token_id(vocab["bos"])
    writer.add_add_bos_token(False)
    if vocab["chat_template"]:
        writer.add_chat_template(vocab["chat_template"])
    for name, tensor in tensors.items():
        data, raw = _encode(tensor.numpy(), matrix_type if tensor.dim() == 2 else "F32")
        writer.add_tensor(name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add(writer: Any, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    else:
        writer.add_float32(key, float(value))


def _encode(array: np.ndarray, type_name: str) -> tuple[np.ndarray, Any]:
    """The tensor in `type_name` (quantized by gguf's numpy quantizers); a matrix whose rows do
    not split into whole blocks of that type is kept at F16, as llama.cpp's converter does."""
    import gguf

    if type_name == "F32":
        return array.astype(np.float32), None
    if type_name == "F16":
        return array.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType[type_name]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if array.shape[-1] % block:
        return array.astype(np.float16), None
    return gguf.quants.quantize(array.astype(np.float32), qtype), qtype
