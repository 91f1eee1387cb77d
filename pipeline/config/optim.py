"""conf/optim/: the optimizer, its schedule, and the batch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config.base import Group


class OptimConfig(Group):
    name: Literal["adamw", "sgd"]
    """The optimizer (AdamW is fused where PyTorch has the kernel)."""
    lr: float = Field(gt=0.0)
    """Peak learning rate, reached after warmup_steps."""
    weight_decay: float = Field(ge=0.0)
    """Decoupled weight decay on Linear weights (not biases, LayerNorms or embeddings)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's betas."""
    eps: float = Field(default=1e-8, gt=0.0)
    """AdamW's epsilon."""
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    """SGD's momentum."""
    batch_size: int = Field(gt=0)
    """Examples per training batch (per device)."""
    eval_batch_size: int | None = Field(default=None, gt=0)
    """Examples per validation/test batch; null: batch_size."""
    accumulate_grad_batches: int = Field(default=1, ge=1)
    """Batches whose gradients add up to one optimizer step."""
    gradient_clip_val: float | None = Field(default=None, ge=0.0)
    """Clip the gradients' global norm to this; null: no clipping."""
    warmup_steps: int = Field(default=0, ge=0)
    """Optimizer steps of linear warmup."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """The decay after warmup."""
    min_lr_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    """The learning rate decays to lr * min_lr_ratio."""
