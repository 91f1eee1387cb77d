"""A trained model with what it needs to be used again: tokenizer, labels, task, config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.checkpoint import Metadata
from pipeline.data.tokenizer import TextTokenizer
from pipeline.model.contract import Model


@dataclass
class Trained:
    model: Model
    tokenizer: TextTokenizer | None
    label_names: list[str] = field(default_factory=list)
    # The resolved config of the run that produced it, when known.
    config: dict[str, Any] = field(default_factory=dict)
    # The LoRA settings when the model carries adapters.
    lora: dict[str, Any] | None = None
    # For LoRA on pretrained weights: their path. Checkpoints then hold only what trains.
    base: str | None = None
    # Sparsity: keep-masks by parameter name (exports re-apply them after merging LoRA), and the
    # layers they target.
    masks: dict[str, torch.Tensor] | None = None
    sparse_layers: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        return "causal_lm" if self.model.is_lm else "classification"

    def parameter_counts(self) -> tuple[int, int]:
        """All parameters and the trainable ones (a tied head counted once)."""
        params = list(self.model.parameters())
        return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)

    def checkpoint_metadata(self) -> Metadata:
        return Metadata(
            model=self.model.metadata(),
            tokenizer=self.tokenizer.to_json() if self.tokenizer else None,
            label_names=self.label_names,
            config=self.config,
            lora=self.lora,
            base=self.base,
        )
