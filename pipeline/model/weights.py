"""Weights in and out: our GPT's state dict <-> Hugging Face GPT-2's layout and config.json.

Hugging Face GPT-2 stores q, k and v fused in `c_attn`, keeps its projections in `Conv1D`
modules whose weights are the transpose of `nn.Linear`'s, and ties `lm_head` to `wte`.
Pickle files are read only with `weights_only=True`; safetensors files are memory-mapped.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.errors import UserError
from pipeline.files import atomic_write, write_json
from pipeline.model.gpt import GPTConfig, GPTModel
from pipeline.tokenizer import TextTokenizer

StateDict = dict[str, torch.Tensor]
MAX_SHARD_BYTES = 5 * 10**9  # export.max_shard_size's default, as transformers uses

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


def classifier_fields(n_outputs: int, label_names: list[str]) -> dict:
    """The config.json fields of a classifier, for our GPT-2 exports and for model=hf.

    Binary classification has one logit (logistic regression): sigmoid > 0.5 means the second
    label; transformers' multi-label problem type applies the same BCE loss.
    """
    names = label_names or [str(i) for i in range(max(n_outputs, 2))]
    outputs = names if n_outputs > 1 else names[1:2]
    return {
        "num_labels": len(outputs),
        "id2label": dict(enumerate(outputs)),
        "label2id": {name: i for i, name in enumerate(outputs)},
        "problem_type": (
            "multi_label_classification" if n_outputs == 1 else "single_label_classification"
        ),
        "pipeline_label_names": names,
    }


def gpt_config_from_hf(config: dict) -> GPTConfig:
    if config.get("model_type") != "gpt2":
        raise UserError(
            f"config.json describes a {config.get('model_type')!r} model, and the GPT presets "
            "read GPT-2 checkpoints (model_type 'gpt2'). Train it with model=hf "
            "model.init_from=<the same directory>."
        )
    is_lm = "GPT2ForSequenceClassification" not in config.get("architectures", [])
    labels = config.get("pipeline_label_names")
    n_outputs = None if is_lm else (1 if labels and len(labels) == 2 else config["num_labels"])
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


def read_state_dict(path: str | Path) -> StateDict:
    """A .safetensors file (memory-mapped) or a pickled state dict (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise UserError(
                f"{path} is not a readable safetensors file ({exc}); it may be truncated or "
                "corrupt. Download or export it again."
            ) from None
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # Files in torch's legacy (pre-zipfile) format cannot be memory-mapped.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        wants_code = [line for line in str(exc).splitlines() if "GLOBAL" in line]
        if not wants_code:
            # Not a pickle that names a function to call: bytes that are no pickle at all.
            raise UserError(
                f"{path} could not be read (not a torch or safetensors file); it may be "
                "truncated or corrupt."
            ) from None
        raise UserError(
            f"Refused to load {path}: it needs more than plain tensors to unpickle "
            f"({wants_code[0].strip()}), and unpickling arbitrary objects can run code. "
            "Convert it to .safetensors where it came from, or re-save only its state_dict."
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise UserError(
            f"{path} could not be read ({str(exc).splitlines()[0]}); it may be truncated or "
            "corrupt."
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return obj


HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def read_hf_weights(directory: str | Path) -> StateDict:
    """The weights of a Hugging Face directory: one file, or the shards its index names."""
    directory = Path(directory)
    for name in HF_WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return read_state_dict(path)
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise UserError(f"{path} is not a valid shard index ({exc}).") from None
        state: StateDict = {}
        for shard in shards:
            state.update(read_state_dict(directory / shard))
        return state
    raise UserError(f"{directory} has no weights: expected one of {', '.join(HF_WEIGHT_FILES)}.")


def read_hf_dir(directory: str | Path) -> tuple[dict, StateDict]:
    """config.json and the weights of a Hugging Face directory."""
    directory = Path(directory)
    try:
        config = json.loads((directory / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{directory / 'config.json'} is not valid JSON ({exc}).") from None
    return config, read_hf_weights(directory)


def save_safetensors(tensors: StateDict, directory: Path, max_shard_bytes: int) -> None:
    """model.safetensors, or shards of at most max_shard_bytes plus the index transformers
    reads; weight files of the other layout left by an earlier export are removed."""
    sizes = {k: v.numel() * v.element_size() for k, v in tensors.items()}
    shards: list[list[str]] = [[]]
    used = 0
    for key in tensors:
        if shards[-1] and used + sizes[key] > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += sizes[key]
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, keys in zip(names, shards, strict=True):
        part = {k: tensors[k] for k in keys}
        atomic_write(
            directory / name,
            lambda tmp, part=part: save_file(part, str(tmp), metadata={"format": "pt"}),
        )
    index = directory / "model.safetensors.index.json"
    if len(shards) > 1:
        weight_map = {k: name for name, keys in zip(names, shards, strict=True) for k in keys}
        write_json(
            index, {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        )
    keep = {*names, index.name} if len(shards) > 1 else set(names)
    for stale in directory.glob("model*.safetensors*"):
        if stale.name not in keep:
            stale.unlink()


def build_from_state(cfg: GPTConfig, state: StateDict, source: str) -> GPTModel:
    """A GPT holding `state`'s tensors themselves: built on the meta device (no random init to
    throw away), then the loaded (for safetensors, memory-mapped) tensors are assigned."""
    with torch.device("meta"):
        model = GPTModel(cfg)
    load_into(model, state, source, assign=True)
    return model


def load_into(
    model: GPTModel, state: StateDict, source: str, new_head: bool = False, assign: bool = False
) -> None:
    """Load `state` into `model`; any missing, unexpected or misshapen key is a UserError that
    names the first few keys, both shapes, and the config field that likely differs.

    With `new_head`, the file's output head is dropped and the model keeps its fresh one
    (a pretrained LM fine-tuned as a classifier). With `assign`, the tensors become the
    parameters instead of being copied into them.
    """
    if is_hf_gpt2(state):
        state = from_hf_gpt2(state, model.cfg)
    state = {k.removeprefix("model."): v for k, v in state.items()}
    expected = model.state_dict()
    if new_head:
        state = {k: v for k, v in state.items() if k != "out_head.weight"}
        state["out_head.weight"] = expected["out_head.weight"]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if mismatched:
        shown = ", ".join(
            f"{k} {tuple(state[k].shape)} in the file vs {tuple(expected[k].shape)} in the model"
            for k in mismatched[:3]
        )
        problems.append(f"shape mismatch: {shown}")
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:4])}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:4])}")
    if problems:
        raise UserError(
            f"The weights in {source} do not fit the model ({'; '.join(problems)}). "
            f"{_likely_field(state, expected, mismatched, missing, missing + unexpected)}"
        )
    model.load_state_dict(state, strict=True, assign=assign)
    if model.cfg.tie_weights and model.cfg.is_lm:
        # Assignment gives the two names separate tensors; tie them again.
        model.out_head.weight = model.tok_emb.weight


def _likely_field(
    state: StateDict,
    expected: StateDict,
    mismatched: list[str],
    missing: list[str],
    keys: list[str],
) -> str:
    """Which config field most likely explains the differences, from the shapes themselves."""
    rows = {k: (tuple(state[k].shape), tuple(expected[k].shape)) for k in mismatched}
    width = rows.get("tok_emb.weight") or rows.get("trf_blocks.0.norm1.weight")
    if width and width[0][-1] != width[1][-1]:
        return "model.emb_dim probably differs."
    if "pos_emb.weight" in rows:
        return "model.context_length probably differs."
    if "tok_emb.weight" in rows:
        return "model.vocab_size probably differs (the tokenizer must match the weights)."
    if "out_head.weight" in rows:
        return "The output head differs: the label count, or model.vocab_size."
    if mismatched:
        return "model.emb_dim or model.n_heads probably differs."
    if any(".att.W_" in k and k.endswith(".bias") for k in keys):
        return "model.qkv_bias probably differs."
    if any(k.startswith("trf_blocks.") for k in keys):
        return "model.n_layers probably differs."
    return "Check that the file was saved from a model of this shape."
