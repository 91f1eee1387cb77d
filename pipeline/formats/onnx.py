"""export/onnx/model.onnx, which onnxruntime runs."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from pipeline.errors import UserError
from pipeline.model.contract import Model


def export_onnx(model: Model, path: Path) -> None:
    """ONNX graph with inputs input_ids and attention_mask (batch and sequence axes dynamic).

    Output `logits`: (batch, tokens, vocab) for a language model; (batch, n_outputs) for a
    classifier, already pooled at each sequence's last real token.
    """
    import importlib.util

    import torch

    if importlib.util.find_spec("onnxscript") is None:
        raise UserError(
            "export.formats includes onnx, which needs the onnx and onnxscript packages. "
            "Install the project with its onnx extra: pip install -e '.[onnx]'."
        )

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            logits = self.model(input_ids, attention_mask)
            if self.model.is_lm:
                return logits
            return self.model.pooled(logits, attention_mask.sum(-1))

    # The exporter warns about torchvision ops and shared axis names; neither concerns us.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("sequence", min=2, max=model.context_length)
    example = torch.ones(2, 8, dtype=torch.long)
    axes = {0: batch, 1: seq}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Graph().eval(),
            (example, torch.ones_like(example)),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": axes, "attention_mask": axes},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
