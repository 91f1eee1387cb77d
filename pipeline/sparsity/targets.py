"""The layers pruning applies to, named as in the model without adapters.

PEFT renames what it wraps (`base_model.model.` in front, `.base_layer` inside an adapted
layer); masks are keyed by the plain names, so they survive adding, merging and removing LoRA.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.model.layers import resolve_targets


def canonical(name: str) -> str:
    return name.replace("base_model.model.", "").replace(".base_layer", "")


def _is_adapter(name: str) -> bool:
    return any(part in name for part in ("lora_", "modules_to_save", "original_module"))


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The model's Linear layers by plain name (LoRA's own A/B layers left out)."""
    return {
        canonical(name): module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not _is_adapter(name)
    }


def target_layers(model: nn.Module, spec: str | list[str]) -> list[str]:
    """The plain names of the Linear layers `sparsity.target_modules` selects (call before LoRA
    wraps the model). An output head is pruned only when a pattern names it; a tied head is
    the token embedding, so pruning it prunes both."""
    chosen = resolve_targets(model, spec, "sparsity.target_modules", heads=True)
    names = [model.peft_prefix + n for n in chosen]
    linear = linear_layers(model)
    other = [n for n in names if n not in linear]
    if other:
        raise UserError(
            f"sparsity.target_modules selects {other[0]}, which is not an nn.Linear layer "
            "(Hugging Face GPT-2 keeps its projections in transposed Conv1D layers). Sparsity "
            "prunes nn.Linear weights: use our GPT (model.init_from loads GPT-2 checkpoints "
            "into it) or an architecture built from nn.Linear."
        )
    return names


def parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter by plain name."""
    return {canonical(n): p for n, p in model.named_parameters() if not _is_adapter(n)}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked entries of the model's parameters in place."""
    params = parameters(model)
    for name, keep in masks.items():
        params[name].mul_(keep.to(params[name].device))
