"""A split's metrics, accumulated batch by batch in plain torch: the same values as the
torchmetrics the training run's test loop logs (tests/test_evaluation.py checks them against
each other), without importing Lightning or torchmetrics in `evaluate`.

- loss: the mean over the examples (classification) or over the trained tokens (LM);
- acc: the share of examples whose predicted label is theirs;
- f1: binary F1 of the positive label (two labels), else the macro mean over the labels that
  occur among the references or predictions (torchmetrics' "macro", which leaves out a label
  with no true positive, false positive or false negative);
- ppl: exp(loss), the loss clipped at 50 as in training.
"""

from __future__ import annotations

import math

import torch


class SplitMetrics:
    def __init__(self, is_lm: bool, n_classes: int):
        """`n_classes`: 2 for a one-output (binary) head."""
        self.is_lm = is_lm
        self.loss_sum, self.weight = 0.0, 0
        self.confusion = torch.zeros(max(n_classes, 2), max(n_classes, 2), dtype=torch.long)

    def update(
        self,
        loss: torch.Tensor,
        weight: int,
        predicted: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        """`loss`: the batch's mean over its `weight` examples or trained tokens."""
        self.loss_sum += float(loss) * weight
        self.weight += weight
        if predicted is not None and labels is not None:
            n = self.confusion.shape[0]
            pairs = labels.long().cpu() * n + predicted.long().cpu()
            self.confusion += torch.bincount(pairs, minlength=n * n).view(n, n)

    def compute(self) -> dict[str, float]:
        loss = self.loss_sum / max(self.weight, 1)
        if self.is_lm:
            return {"loss": loss, "ppl": math.exp(min(loss, 50.0))}
        c = self.confusion.double()
        tp = c.diagonal()
        fp, fn = c.sum(0) - tp, c.sum(1) - tp
        acc = float(tp.sum() / c.sum().clamp_min(1))
        f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
        if c.shape[0] == 2:
            return {"loss": loss, "acc": acc, "f1": float(f1[1])}
        present = (tp + fp + fn) > 0
        macro = float(f1[present].mean()) if present.any() else 0.0
        return {"loss": loss, "acc": acc, "f1": macro}
