"""The tasks' losses and predicted labels, shared by training (pipeline/run/module.py) and
evaluation (pipeline/evaluation/)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.data.loader import IGNORE_INDEX


def classification_loss(pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One output: the logistic-regression loss (BCE with logits). Several: cross-entropy."""
    if pooled.shape[-1] == 1:
        return F.binary_cross_entropy_with_logits(pooled.squeeze(-1), labels.float())
    return F.cross_entropy(pooled, labels)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over the trained tokens (mean, or sum); padded and untrained
    positions hold IGNORE_INDEX."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction=reduction,
    )


def predicted(pooled: torch.Tensor) -> torch.Tensor:
    """A classifier's label indices: one output's sign, else the largest logit."""
    return (pooled.squeeze(-1) > 0).long() if pooled.shape[-1] == 1 else pooled.argmax(-1)
