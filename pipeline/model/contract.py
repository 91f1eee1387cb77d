"""What the pipeline needs of a model, whatever its architecture. Our GPT (gpt.py) and the
Hugging Face wrapper (hf.py) both provide it, so training, LoRA, sparsity, export and generation
never ask which one they hold.

A LoRA model is a PEFT model around one of them: PEFT forwards these attributes to it.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn


class Model(Protocol):
    arch: str
    """What the checkpoint metadata names it: gpt or hf."""
    context_length: int
    peft_prefix: str
    """Where peft_root sits inside the model ("" or "hf."), so names match either way."""
    peft_task: str | None
    """PEFT's task_type for the adapters (None: PEFT wraps a plain module)."""

    @property
    def is_lm(self) -> bool:
        """A language model (next-token logits), else a classifier."""

    @property
    def n_outputs(self) -> int | None:
        """A classifier's logits per example (1: binary logistic regression); None for an LM."""

    @property
    def peft_root(self) -> nn.Module:
        """The module PEFT wraps."""

    def with_peft_root(self, root: nn.Module) -> Model:
        """The model with `root` (adapters added, merged or removed) in place of peft_root."""

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """LM: (batch, tokens, vocab) logits. Classifier: what `pooled` turns into
        (batch, n_outputs). Position ids that restart at 0 mark packed examples, each
        attending only within itself."""

    def pooled(self, logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """A classifier's logits per example, at each sequence's last real token."""

    def metadata(self) -> dict[str, Any]:
        """What rebuilds the architecture (stored in checkpoints)."""
