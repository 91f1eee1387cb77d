"""Packing is exact: a packed batch gives every token the loss it gets unpacked, for our GPT
and for a Hugging Face Llama (transformers confines attention within each example from the
restarting position ids). Other trainers shipped packing that let examples attend to each
other; this test would catch it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.assembly.restore import load_trained
from pipeline.config.data import DataConfig
from pipeline.data.loader import IGNORE_INDEX, split_loader
from pipeline.data.preparation import build_data
from pipeline.model.gpt import GPTConfig, GPTModel
from tests.helpers import randomize, tiny_llama


def bundle(path: Path, packing: bool):
    cfg = DataConfig.model_validate(
        {
            "name": "t",
            "task": "instruct",
            "format": "jsonl",
            "path": str(path),
            "val_fraction": 0.0,
            "test_fraction": 0.0,
            "max_length": 96,
            "packing": packing,
            "tokenizer": {"vocab_size": 300, "min_frequency": 1},
        }
    )
    return build_data(cfg, 0)


def token_losses(model, data) -> list[torch.Tensor]:
    """The loss of every trained token, example by example, in the data's order."""
    out = []
    for batch in split_loader(data, "train", batch_size=8, seed=0, workers=0):
        positions = batch.get("position_ids")
        with torch.no_grad():
            logits = model(batch["input_ids"], position_ids=positions)
        losses = F.cross_entropy(logits.transpose(1, 2), batch["targets"], reduction="none")
        for row in range(batch["input_ids"].shape[0]):
            n = int(batch["lengths"][row])
            starts = [0] if positions is None else torch.nonzero(positions[row, :n] == 0)[:, 0]
            bounds = [*map(int, starts), n]
            for a, b in itertools.pairwise(bounds):
                keep = batch["targets"][row, a:b] != IGNORE_INDEX
                out.append(losses[row, a:b][keep])
    return out


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("packing") / "d.jsonl"
    rows = []
    for i in range(24):  # lengths from a few tokens to most of a row
        rows.append({"instruction": "word " * (1 + (i * 7) % 23), "output": "yes " * (1 + i % 5)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_packed_token_losses_equal_unpacked(data_file, tmp_path, kind) -> None:
    padded, packed = bundle(data_file, False), bundle(data_file, True)
    assert len(packed.splits["train"].ids) < len(padded.splits["train"].ids) / 2
    tokenizer = padded.tokenizer
    if kind == "gpt":
        model = randomize(GPTModel(GPTConfig(tokenizer.vocab_size, 96, 32, 4, 2)))
    else:
        tiny_llama(tmp_path / "llama", tokenizer)
        model = load_trained(tmp_path / "llama").model
    model.eval()
    alone, together = token_losses(model, padded), token_losses(model, packed)
    assert len(alone) == len(together) == 24
    for a, b in zip(alone, together, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5), (a, b)
