"""LoRA adapters through PEFT: adding them to the targeted layers, merging and removing them.

PEFT (and with it transformers) is imported only when lora is not `none`. The adapter export is
pipeline/formats/adapter.py.
"""

from __future__ import annotations

import copy
import warnings

from torch import nn

from pipeline.config.lora import LoraConfig
from pipeline.model.contract import Model
from pipeline.model.layers import head_name, resolve_targets


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


def apply_lora(model: Model, cfg: LoraConfig) -> Model:
    """Adapters on the targeted modules; only they (and modules_to_save) keep requires_grad."""
    from peft import get_peft_model

    # PEFT calls a transformers API that transformers 5 deprecates; nothing for users to do.
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )
    targets = resolve_targets(model, cfg.target_modules)
    head = head_name(model)
    save = cfg.modules_to_save if cfg.modules_to_save is not None else ([head] if head else None)
    config = _peft_config(cfg, targets, save, model.peft_task)
    return model.with_peft_root(get_peft_model(model.peft_root, config))


def _is_peft(module: nn.Module) -> bool:
    return type(module).__name__.startswith("PeftModel")


def peft_model(model: Model) -> nn.Module:
    """The PEFT model inside a model with adapters: our GPT's PEFT wrapper is the model itself
    (and forwards peft_root to the GPT within), the Hugging Face wrapper holds it."""
    return model if _is_peft(model) else model.peft_root


def is_lora(model: Model) -> bool:
    return _is_peft(peft_model(model))


def plain_copy(model: Model, merge: bool) -> Model:
    """A copy without adapter layers: LoRA merged into the weights, or the base weights as they
    are (the trained modules_to_save included either way)."""
    clone = copy.deepcopy(model)
    peft = peft_model(clone)
    return clone.with_peft_root(peft.merge_and_unload() if merge else peft.unload())
