"""Our GPT's state dict <-> Hugging Face GPT-2's layout and config.json.

Hugging Face GPT-2 stores q, k and v fused in `c_attn`, keeps its projections in `Conv1D`
modules whose weights are the transpose of `nn.Linear`'s, and ties `lm_head` to `wte`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.data.tokenizer import TextTokenizer
from pipeline.errors import UserError
from pipeline.files import write_json
from pipeline.model.gpt import GPTConfig, GPTModel
from pipeline.model.heads import classifier_fields
from pipeline.weights.io import MAX_SHARD_BYTES, StateDict, save_safetensors

# (our suffix, Hugging Face suffix, transposed) inside block i: trf_blocks.i.* <-> h.i.*
_BLOCK = [
    ("norm1.weight", "ln_1.weight", False),
    ("norm1.bias", "ln_1.bias", False),
    ("att.out_proj.weight", "attn.c_proj.weight", True),
    ("att.out_proj.bias", "attn.c_proj.bias", False),
    ("norm2.weight", "ln_2.weight", False),
    ("norm2.bias", "ln_2.bias", False),
    ("ff.fc1.weight", "mlp.c_fc.weight", True),
    ("ff.fc1.bias", "mlp.c_fc.bias", False),
    ("ff.fc2.weight", "mlp.c_proj.weight", True),
    ("ff.fc2.bias", "mlp.c_proj.bias", False),
]
_TOP = [
    ("tok_emb.weight", "wte.weight"),
    ("pos_emb.weight", "wpe.weight"),
    ("final_norm.weight", "ln_f.weight"),
    ("final_norm.bias", "ln_f.bias"),
]
_QKV = ("W_query", "W_key", "W_value")


def to_hf_gpt2(state: StateDict, cfg: GPTConfig) -> StateDict:
    """Our state dict in GPT2LMHeadModel / GPT2ForSequenceClassification naming."""
    out: StateDict = {f"transformer.{hf}": state[ours] for ours, hf in _TOP}
    d = cfg.emb_dim
    for i in range(cfg.n_layers):
        ours, hf = f"trf_blocks.{i}.", f"transformer.h.{i}."
        for our_key, hf_key, transpose in _BLOCK:
            tensor = state[ours + our_key]
            out[hf + hf_key] = tensor.t() if transpose else tensor
        out[hf + "attn.c_attn.weight"] = torch.cat(
            [state[f"{ours}att.{name}.weight"].t() for name in _QKV], dim=1
        )
        # Hugging Face's c_attn always has a bias; without qkv_bias ours is zero.
        out[hf + "attn.c_attn.bias"] = torch.cat(
            [state.get(f"{ours}att.{name}.bias", torch.zeros(d)) for name in _QKV]
        )
    if not cfg.is_lm:
        out["score.weight"] = state["out_head.weight"]
    elif not cfg.tie_weights:
        out["lm_head.weight"] = state["out_head.weight"]
    return {key: value.contiguous() for key, value in out.items()}


def is_hf_gpt2(state: StateDict) -> bool:
    return any(key.endswith("attn.c_attn.weight") for key in state)


# Causal-mask buffers that old GPT-2 checkpoints store; the model rebuilds them.
_HF_BUFFERS = ("attn.bias", "attn.masked_bias")


def from_hf_gpt2(state: StateDict, cfg: GPTConfig) -> StateDict:
    """Hugging Face GPT-2 naming (with or without the `transformer.` prefix) to ours.

    Sizes come from the file, not from `cfg`, so a file of another shape reaches load_into's
    mismatch report; keys it does not know pass through and are reported as unexpected. The
    LM head is kept only when it fits `cfg`'s head; a zero q/k/v bias is dropped for a model
    without one (our GPT-2 exports write zeros there).
    """
    hf = {key.removeprefix("transformer."): value for key, value in state.items()}
    out: StateDict = {}
    used = set()
    for ours, name in _TOP:
        if name in hf:
            out[ours], _ = hf[name], used.add(name)
    layers = sorted({int(key.split(".")[1]) for key in hf if key.startswith("h.")})
    for i in layers:
        src, dst = f"h.{i}.", f"trf_blocks.{i}."
        for our_key, hf_key, transpose in _BLOCK:
            if src + hf_key in hf:
                tensor = hf[src + hf_key]
                out[dst + our_key] = tensor.t() if transpose else tensor
                used.add(src + hf_key)
        weight, bias = hf.get(src + "attn.c_attn.weight"), hf.get(src + "attn.c_attn.bias")
        if weight is not None:
            for name, part in zip(_QKV, weight.chunk(3, dim=1), strict=True):
                out[f"{dst}att.{name}.weight"] = part.t()
        if bias is not None and (cfg.qkv_bias or bool(bias.any())):
            for name, part in zip(_QKV, bias.chunk(3), strict=True):
                out[f"{dst}att.{name}.bias"] = part
        used.update({src + "attn.c_attn.weight", src + "attn.c_attn.bias"})
        used.update(src + buffer for buffer in _HF_BUFFERS)
    head = hf.get("score.weight") if not cfg.is_lm else hf.get("lm_head.weight")
    used.update({"score.weight", "lm_head.weight"})
    if head is not None and head.shape[0] == cfg.head_size:
        out["out_head.weight"] = head
    elif cfg.is_lm and cfg.tie_weights and "tok_emb.weight" in out:
        out["out_head.weight"] = out["tok_emb.weight"]
    out.update({key: value for key, value in hf.items() if key not in used})
    return {key: value.contiguous() for key, value in out.items()}


def hf_config(
    cfg: GPTConfig, tokenizer: TextTokenizer | None, label_names: list[str] | None
) -> dict:
    """config.json for transformers' GPT-2 classes."""
    config = {
        "architectures": ["GPT2LMHeadModel" if cfg.is_lm else "GPT2ForSequenceClassification"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_embd": cfg.emb_dim,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "use_cache": True,
        "tie_word_embeddings": bool(cfg.tie_weights and cfg.is_lm),
        "torch_dtype": "float32",
        # Ours, so that a reload rebuilds exactly this model.
        "qkv_bias": cfg.qkv_bias,
    }
    if tokenizer is not None:
        config.update(
            bos_token_id=tokenizer.eos_id,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
        )
    if not cfg.is_lm:
        config.update(classifier_fields(cfg.head_size, label_names or []))
    return config


# config.json's shape fields, each a positive whole number.
_SHAPE = ("vocab_size", "n_positions", "n_embd", "n_head", "n_layer")


def gpt_config_from_hf(config: dict, source: Path | str = "config.json") -> GPTConfig:
    """Our GPT's shape from a GPT-2 config.json (`source`, named when a field is unusable)."""
    if config.get("model_type") != "gpt2":
        raise UserError(
            f"{source} describes a {config.get('model_type')!r} model, and the GPT presets "
            "read GPT-2 checkpoints (model_type 'gpt2'). Train it with model=hf "
            "model.init_from=<the same directory>."
        )
    for key in _SHAPE:
        value = config.get(key)
        if type(value) is not int or value < 1:
            raise UserError(
                f"{source} has {key}={value!r}, but a GPT-2 config.json gives it as a positive "
                "whole number; the file is damaged or not a GPT-2 config. Export or download "
                "the model again."
            )
    architectures = config.get("architectures")
    is_lm = not isinstance(architectures, list) or (
        "GPT2ForSequenceClassification" not in architectures
    )
    labels = config.get("pipeline_label_names")
    n_outputs = None if is_lm else (1 if labels and len(labels) == 2 else config.get("num_labels"))
    return GPTConfig(
        vocab_size=config["vocab_size"],
        context_length=config["n_positions"],
        emb_dim=config["n_embd"],
        n_heads=config["n_head"],
        n_layers=config["n_layer"],
        drop_rate=config.get("resid_pdrop", 0.0),
        qkv_bias=config.get("qkv_bias", True),
        tie_weights=config.get("tie_word_embeddings", True),
        layer_norm_eps=config.get("layer_norm_epsilon", 1e-5),
        n_outputs=n_outputs,
    )


def save_hf(
    model: GPTModel,
    directory: str | Path,
    tokenizer: TextTokenizer | None = None,
    label_names: list[str] | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """config.json + model.safetensors (or shards and their index) + tokenizer files, which
    transformers loads directly as GPT2LMHeadModel / GPT2ForSequenceClassification."""
    directory = Path(directory)
    cfg = model.cfg
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_safetensors(to_hf_gpt2(state, cfg), directory, max_shard_bytes)
    write_json(directory / "config.json", hf_config(cfg, tokenizer, label_names))
    if cfg.is_lm and tokenizer is not None:
        write_json(
            directory / "generation_config.json",
            {
                "bos_token_id": tokenizer.eos_id,
                "eos_token_id": tokenizer.eos_id,
                "pad_token_id": tokenizer.pad_id,
            },
        )
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory
