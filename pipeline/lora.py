"""LoRA adapters through PEFT: which modules get them, merging, and the adapter export.

PEFT (and with it transformers) is imported only when lora is not `none`.

Our GPT keeps the teaching texts' separate W_query/W_key/W_value, while Hugging Face GPT-2 fuses
them into one `c_attn`. The adapter export maps t adapted projections of rank r onto `c_attn`
as one adapter of rank t*r: A stacked, B block-diagonal (zeros where a projection is not
adapted), alpha scaled so alpha/r (or alpha/sqrt(r) for rsLoRA) is unchanged. That is exactly
the same function, so PEFT loads it onto GPT2LMHeadModel / GPT2ForSequenceClassification.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config import LoraConfig
from pipeline.errors import UserError
from pipeline.files import move_files_into

# The parent module of an attention projection, in our GPT and common HF architectures.
_ATTENTION_PARENT = re.compile(r"(^|\.)(att|attn|attention|self_attn|self_attention)$")
_HEADS = ("out_head", "lm_head", "score", "classifier")
_QKV = ("W_query", "W_key", "W_value")
# Our block module -> Hugging Face GPT-2 module, for every LoRA target but q/k/v.
_GPT2_NAMES = {"att.out_proj": "attn.c_proj", "ff.fc1": "mlp.c_fc", "ff.fc2": "mlp.c_proj"}


def _peft_root(model: nn.Module) -> nn.Module:
    """The module PEFT wraps: our GPT itself, or the transformers model inside an HFModel."""
    return getattr(model, "hf", model)


def linear_modules(model: nn.Module, heads: bool = False) -> list[str]:
    """Names of the Linear (and transformers' Conv1D) layers, output heads excluded unless
    `heads`."""
    return [
        name
        for name, module in _peft_root(model).named_modules()
        if (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D")
        and (heads or name.rsplit(".", 1)[-1] not in _HEADS)
    ]


def _shapes(names: list[str]) -> str:
    """Module names with layer numbers folded: trf_blocks.N.att.W_query, ..."""
    return ", ".join(dict.fromkeys(re.sub(r"\.\d+\.", ".N.", name) for name in names))


def resolve_targets(
    model: nn.Module, spec: str | list[str], key: str = "lora.target_modules", heads: bool = False
) -> list[str]:
    """The exact module names `spec` selects (attention, all-linear, or name patterns; with
    `heads`, patterns may also name an output head); a pattern that selects nothing is an
    error that lists the modules that exist."""
    names = linear_modules(model)
    if spec == "attention":
        chosen = [n for n in names if _ATTENTION_PARENT.search(n.rpartition(".")[0])]
    elif spec == "all-linear":
        chosen = names
    else:
        names = linear_modules(model, heads)
        patterns = [spec] if isinstance(spec, str) else spec
        for pattern in patterns:
            if not any(re.search(pattern, n) for n in names):
                raise UserError(
                    f"Config error: {key} pattern {pattern!r} matches no module. "
                    f"The Linear modules of this model are: {_shapes(names)}. Use one of these "
                    f"names, or {key}=attention / all-linear."
                )
        chosen = [n for n in names if any(re.search(p, n) for p in patterns)]
    if not chosen:
        raise UserError(
            f"Config error: {key}={spec!r} selects no module. The "
            f"Linear modules of this model are: {_shapes(names)}."
        )
    return chosen


def _head(model: nn.Module) -> str | None:
    if model.is_lm:
        return None
    names = {n.rsplit(".", 1)[-1] for n, _ in _peft_root(model).named_modules()}
    return next(h for h in _HEADS if h in names)


def _peft_config(cfg: LoraConfig, targets: list[str], save: list[str] | None, task: str | None):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        bias=cfg.bias,
        modules_to_save=save,
        init_lora_weights=True if cfg.init == "default" else "gaussian",
        task_type=task,
    )


def apply_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Adapters on the targeted modules; only they (and modules_to_save) keep requires_grad.

    Returns a PeftModel around our GPT, or the HFModel with its transformers model wrapped.
    """
    from peft import get_peft_model

    # PEFT calls a transformers API that transformers 5 deprecates; nothing for users to do.
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )
    targets = resolve_targets(model, cfg.target_modules)
    head = _head(model)
    save = cfg.modules_to_save if cfg.modules_to_save is not None else ([head] if head else None)
    if hasattr(model, "hf"):
        task = "CAUSAL_LM" if model.is_lm else "SEQ_CLS"
        model.hf = get_peft_model(model.hf, _peft_config(cfg, targets, save, task))
        return model
    return get_peft_model(model, _peft_config(cfg, targets, save, None))


def is_lora(model: nn.Module) -> bool:
    return type(_peft_root(model)).__name__.startswith("PeftModel")


def plain_copy(model: nn.Module, merge: bool) -> nn.Module:
    """A copy without adapter layers: LoRA merged into the weights, or the base weights as they
    are (the trained modules_to_save included either way)."""
    clone = copy.deepcopy(model)
    if hasattr(clone, "hf"):
        clone.hf = clone.hf.merge_and_unload() if merge else clone.hf.unload()
        return clone
    return clone.merge_and_unload() if merge else clone.unload()


def save_adapter(model: nn.Module, directory: Path, base_hf_dir: Path) -> None:
    """adapter_config.json + adapter_model.safetensors that peft.PeftModel.from_pretrained loads
    onto the Hugging Face model in `base_hf_dir` (our export/hf of the unmerged base)."""
    peft_model = model.hf if hasattr(model, "hf") else _gpt2_adapter(model, base_hf_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=directory.parent, prefix=".adapter-") as tmp,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", FutureWarning)
        peft_model.save_pretrained(tmp)
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
