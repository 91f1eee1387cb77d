"""Which Linear layers a model has, and which of them a spec selects: the targets of LoRA
(lora.target_modules) and of pruning (sparsity.target_modules)."""

from __future__ import annotations

import re

from torch import nn

from pipeline.errors import UserError

# The parent module of an attention projection, in our GPT and common HF architectures.
_ATTENTION_PARENT = re.compile(r"(^|\.)(att|attn|attention|self_attn|self_attention)$")
HEADS = ("out_head", "lm_head", "score", "classifier")


def linear_modules(model: nn.Module, heads: bool = False) -> list[str]:
    """Names (under the model's PEFT root) of its Linear and transformers' Conv1D layers, output
    heads excluded unless `heads`."""
    return [
        name
        for name, module in model.peft_root.named_modules()
        if (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D")
        and (heads or name.rsplit(".", 1)[-1] not in HEADS)
    ]


def head_name(model: nn.Module) -> str | None:
    """A classifier's output head (trained fully beside adapters); None for an LM."""
    if model.is_lm:
        return None
    names = {n.rsplit(".", 1)[-1] for n, _ in model.peft_root.named_modules()}
    return next(h for h in HEADS if h in names)


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
