"""Losses against hand computations, pooling, and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.data.loader import IGNORE_INDEX
from pipeline.losses import classification_loss, lm_loss
from pipeline.model.heads import pool_last_token
from pipeline.run.module import lr_lambda


def test_binary_loss_is_logistic_regression_loss() -> None:
    logits = torch.tensor([[2.0], [-1.0], [0.5]])
    labels = torch.tensor([1.0, 0.0, 0.0])

    def sigmoid(z: float) -> float:
        return 1 / (1 + math.exp(-z))

    by_hand = (
        -(math.log(sigmoid(2.0)) + math.log(1 - sigmoid(-1.0)) + math.log(1 - sigmoid(0.5))) / 3
    )
    assert classification_loss(logits, labels).item() == pytest.approx(by_hand, rel=1e-6)


def test_multiclass_loss_is_cross_entropy() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    labels = torch.tensor([0, 2])

    def nll(row: list[float], k: int) -> float:
        return -(row[k] - math.log(sum(math.exp(v) for v in row)))

    by_hand = (nll([1.0, 2.0, 0.0], 0) + nll([0.0, 0.0, 3.0], 2)) / 2
    assert classification_loss(logits, labels).item() == pytest.approx(by_hand, rel=1e-6)


def test_lm_loss_ignores_padding() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[1, 2, 3, IGNORE_INDEX], [4, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    real = [(0, 0, 1), (0, 1, 2), (0, 2, 3), (1, 0, 4)]
    by_hand = sum(-torch.log_softmax(logits[b, t], -1)[y].item() for b, t, y in real) / len(real)
    assert lm_loss(logits, targets).item() == pytest.approx(by_hand, rel=1e-6)
    # Whatever the logits at padded positions are, the loss does not move.
    noisy = logits.clone()
    noisy[0, 3] += 100
    noisy[1, 1:] -= 50
    assert lm_loss(noisy, targets).item() == pytest.approx(by_hand, rel=1e-6)


def test_pooling_takes_the_last_real_token_never_a_pad() -> None:
    logits = torch.arange(2 * 5 * 1, dtype=torch.float).view(2, 5, 1)
    pooled = pool_last_token(logits, torch.tensor([3, 5]))
    assert pooled.squeeze(-1).tolist() == [2.0, 9.0]


def test_schedule_warmup_then_cosine_to_min_ratio() -> None:
    f = lr_lambda(warmup=10, total=110, schedule="cosine", min_ratio=0.1)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(110) == pytest.approx(0.1)
    linear = lr_lambda(0, 100, "linear", 0.0)
    assert linear(25) == pytest.approx(0.75)
    assert lr_lambda(5, 100, "constant", 0.0)(50) == 1.0
