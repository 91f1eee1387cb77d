"""export/adapter/: adapter_config.json + adapter_model.safetensors, which
peft.PeftModel.from_pretrained loads onto the Hugging Face model in export/hf/.

Our GPT keeps the teaching texts' separate W_query/W_key/W_value, while Hugging Face GPT-2 fuses
them into one `c_attn`. The adapter export maps t adapted projections of rank r onto `c_attn`
as one adapter of rank t*r: A stacked, B block-diagonal (zeros where a projection is not
adapted), alpha scaled so alpha/r (or alpha/sqrt(r) for rsLoRA) is unchanged. That is exactly
the same function, so PEFT loads it onto GPT2LMHeadModel / GPT2ForSequenceClassification.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.files import move_files_into
from pipeline.lora import peft_model
from pipeline.model.contract import Model

_QKV = ("W_query", "W_key", "W_value")
# Our block module -> Hugging Face GPT-2 module, for every LoRA target but q/k/v.
_GPT2_NAMES = {"att.out_proj": "attn.c_proj", "ff.fc1": "mlp.c_fc", "ff.fc2": "mlp.c_proj"}


def save_adapter(model: Model, directory: Path, base_hf_dir: Path) -> None:
    """The adapters of `model`, for the Hugging Face model in `base_hf_dir` (our export/hf of
    the unmerged base): a Hugging Face model's own, our GPT's rebuilt on GPT-2's layout."""
    peft = peft_model(model) if model.arch == "hf" else _gpt2_adapter(model, base_hf_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=directory.parent, prefix=".adapter-") as tmp,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", FutureWarning)
        peft.save_pretrained(tmp)
        move_files_into(tmp, directory)


def _gpt2_adapter(model: nn.Module, base_hf_dir: Path) -> Any:
    """Our GPT's adapters rebuilt on transformers' GPT-2 (see the module docstring)."""
    import transformers
    from peft import get_peft_model

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    ours = model.base_model.model
    cfg, lora_cfg = ours.cfg, model.peft_config["default"]
    d, r = cfg.emb_dim, lora_cfg.r
    base_cls = (
        transformers.GPT2LMHeadModel if cfg.is_lm else transformers.GPT2ForSequenceClassification
    )
    base = base_cls.from_pretrained(base_hf_dir, dtype=torch.float32)
    layers = {name: ours.get_submodule(name) for name in lora_cfg.target_modules}
    targets, ranks, alphas = [], {}, {}
    for i in range(cfg.n_layers):
        adapted = [q for q in _QKV if f"trf_blocks.{i}.att.{q}" in layers]
        if adapted:
            name = f"transformer.h.{i}.attn.c_attn"
            targets.append(name)
            t = len(adapted)
            ranks[re.escape(name)] = t * r
            alphas[re.escape(name)] = lora_cfg.lora_alpha * (
                math.sqrt(t) if lora_cfg.use_rslora else t
            )
        targets += [
            f"transformer.h.{i}.{hf}"
            for o, hf in _GPT2_NAMES.items()
            if f"trf_blocks.{i}.{o}" in layers
        ]
    head = None if cfg.is_lm else "score"
    config = dataclasses.replace(
        lora_cfg,
        target_modules=targets,
        modules_to_save=[head] if head else None,
        task_type="CAUSAL_LM" if cfg.is_lm else "SEQ_CLS",
        rank_pattern=ranks,
        alpha_pattern=alphas,
        fan_in_fan_out=True,
    )
    hf = get_peft_model(base, config)
    with torch.no_grad():
        for i in range(cfg.n_layers):
            _copy_qkv(hf, ours, layers, i, d, r)
            for o, hf_name in _GPT2_NAMES.items():
                if f"trf_blocks.{i}.{o}" in layers:
                    _copy_adapter(
                        layers[f"trf_blocks.{i}.{o}"],
                        hf.get_submodule(f"base_model.model.transformer.h.{i}.{hf_name}"),
                    )
        if head:
            trained = ours.out_head.modules_to_save["default"].weight
            hf.get_submodule("base_model.model.score").modules_to_save["default"].weight.copy_(
                trained
            )
    return hf


def _copy_adapter(src: nn.Module, dst: nn.Module) -> None:
    dst.lora_A["default"].weight.copy_(src.lora_A["default"].weight)
    dst.lora_B["default"].weight.copy_(src.lora_B["default"].weight)
    if "default" in getattr(src, "lora_magnitude_vector", {}):
        dst.lora_magnitude_vector["default"].weight.copy_(
            src.lora_magnitude_vector["default"].weight
        )


def _copy_qkv(hf: nn.Module, ours: nn.Module, layers: dict, i: int, d: int, r: int) -> None:
    adapted = [q for q in _QKV if f"trf_blocks.{i}.att.{q}" in layers]
    if not adapted:
        return
    dst = hf.get_submodule(f"base_model.model.transformer.h.{i}.attn.c_attn")
    a = torch.cat([layers[f"trf_blocks.{i}.att.{q}"].lora_A["default"].weight for q in adapted])
    b = torch.zeros(3 * d, len(adapted) * r)
    magnitude = []
    for j, q in enumerate(_QKV):
        if q in adapted:
            k = adapted.index(q)
            src = layers[f"trf_blocks.{i}.att.{q}"]
            b[j * d : (j + 1) * d, k * r : (k + 1) * r] = src.lora_B["default"].weight
            if "default" in src.lora_magnitude_vector:
                magnitude.append(src.lora_magnitude_vector["default"].weight)
        else:
            # A projection without adapter keeps its own norm, so DoRA leaves it unchanged.
            base = ours.get_submodule(f"trf_blocks.{i}.att.{q}")
            magnitude.append(getattr(base, "base_layer", base).weight.norm(dim=1))
    dst.lora_A["default"].weight.copy_(a)
    dst.lora_B["default"].weight.copy_(b)
    if "default" in dst.lora_magnitude_vector:
        dst.lora_magnitude_vector["default"].weight.copy_(torch.cat(magnitude))
