"""The output of a classifier: pooling at the last real token, and the label fields of a
Hugging Face config.json."""

from __future__ import annotations

import torch


def pool_last_token(logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The logits at each sequence's last real token (never a pad: padding is on the right)."""
    return logits[torch.arange(logits.shape[0], device=logits.device), lengths - 1]


def classifier_fields(n_outputs: int, label_names: list[str]) -> dict:
    """The config.json fields of a classifier, for our GPT-2 exports and for model=hf.

    Binary classification has one logit (logistic regression): sigmoid > 0.5 means the second
    label; transformers' multi-label problem type applies the same BCE loss.
    """
    names = label_names or [str(i) for i in range(max(n_outputs, 2))]
    outputs = names if n_outputs > 1 else names[1:2]
    return {
        "num_labels": len(outputs),
        "id2label": dict(enumerate(outputs)),
        "label2id": {name: i for i, name in enumerate(outputs)},
        "problem_type": (
            "multi_label_classification" if n_outputs == 1 else "single_label_classification"
        ),
        "pipeline_label_names": names,
    }


def label_probabilities(pooled: torch.Tensor) -> torch.Tensor:
    """Probabilities of every label from one example's pooled logits (one logit: sigmoid)."""
    if pooled.numel() == 1:
        return torch.stack([1 - pooled.sigmoid(), pooled.sigmoid()]).reshape(-1)
    return pooled.softmax(-1)
