"""Exports load in transformers with our logits (within 1e-4, fp32), and weights load safely."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from pipeline.assembly.restore import load_trained
from pipeline.assembly.trained import Trained
from pipeline.data.tokenizer import TextTokenizer
from pipeline.formats import export_trained
from pipeline.model.gpt import GPTConfig, GPTModel
from pipeline.model.heads import pool_last_token
from pipeline.weights.gpt2 import save_hf
from pipeline.weights.io import read_state_dict
from pipeline.weights.load import load_into

TOL = 1e-4


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    texts = ["call me later", "WINNER claim your prize now", "see you at the pub"] * 30
    return TextTokenizer.train(texts, vocab_size=300, min_frequency=1)


def random_model(tokenizer: TextTokenizer, **overrides) -> GPTModel:
    """A small GPT with large random weights, so any layout mistake shows in the logits."""
    fields = dict(
        vocab_size=tokenizer.vocab_size, context_length=32, emb_dim=48, n_heads=4, n_layers=3
    )
    model = GPTModel(GPTConfig(**{**fields, **overrides}))
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    return model.eval()


def padded_batch(tokenizer: TextTokenizer, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.full((len(lengths), max(lengths)), tokenizer.pad_id)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(2, tokenizer.vocab_size, (n,))  # never a special token
    return ids, torch.tensor(lengths)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"qkv_bias": True}, {"tie_weights": False}],
    ids=["tied", "qkv-bias", "untied"],
)
def test_lm_export_matches_transformers(tmp_path: Path, tokenizer, overrides) -> None:
    model = random_model(tokenizer, **overrides)
    save_hf(model, tmp_path, tokenizer)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, tokenizer.vocab_size, (2, 20))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert (ours - theirs).abs().max().item() < TOL
    assert ours.abs().max().item() > 1.0  # the comparison is not between near-zero numbers


@pytest.mark.parametrize("labels", [["ham", "spam"], ["a", "b", "c"]], ids=["binary", "3-class"])
def test_classifier_export_matches_transformers(tmp_path: Path, tokenizer, labels) -> None:
    model = random_model(tokenizer, n_outputs=1 if len(labels) == 2 else len(labels))
    save_hf(model, tmp_path, tokenizer, labels)
    hf = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path).eval()
    ids, lengths = padded_batch(tokenizer, [12, 5, 9])
    with torch.no_grad():
        ours = pool_last_token(model(ids), lengths)
        theirs = hf(ids).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < TOL
    if len(labels) == 2:
        assert hf.config.id2label == {0: "spam"}


def test_exported_tokenizer_loads_in_transformers(tmp_path: Path, tokenizer) -> None:
    save_hf(random_model(tokenizer), tmp_path, tokenizer)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "WINNER, see you at the pub!"
    assert hf_tok(text)["input_ids"] == tokenizer.encode(text)
    assert hf_tok.pad_token_id == tokenizer.pad_id


def test_hf_export_reloads_in_the_pipeline(tmp_path: Path, tokenizer) -> None:
    model = random_model(tokenizer, n_outputs=3)
    export_trained(Trained(model, tokenizer, ["a", "b", "c"]), ["hf", "weights"], tmp_path)
    again = load_trained(tmp_path / "hf")
    ids = torch.randint(0, tokenizer.vocab_size, (2, 10))
    torch.testing.assert_close(again.model(ids), model(ids), atol=0, rtol=0)
    assert again.label_names == ["a", "b", "c"]
    # The plain state dict holds our names and loads back bit for bit.
    state = read_state_dict(tmp_path / "weights" / "model.pth")
    fresh = GPTModel(model.cfg)
    load_into(fresh, state, "model.pth")
    torch.testing.assert_close(fresh.eval()(ids), model(ids), atol=0, rtol=0)
