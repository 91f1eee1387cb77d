"""The GPT: shapes, causal masking, parameter counts, weight tying, sampling."""

from __future__ import annotations

import pytest
import torch

from pipeline.model.gpt import GPTConfig, GPTModel

TINY = GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=2)


def test_output_shapes_lm_and_classifier() -> None:
    ids = torch.randint(0, 97, (3, 11))
    assert GPTModel(TINY)(ids).shape == (3, 11, 97)
    clf = GPTConfig(**{**TINY.to_dict(), "n_outputs": 5})
    assert GPTModel(clf)(ids).shape == (3, 11, 5)


def test_causal_masking_future_tokens_do_not_change_the_past() -> None:
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    ids = torch.randint(0, 97, (2, 12))
    changed = ids.clone()
    changed[:, 7:] = torch.randint(0, 97, (2, 5))
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_attention_matches_explicit_masked_softmax() -> None:
    """SDPA's result equals the textbook softmax(QK^T / sqrt(d) + causal mask) V."""
    torch.manual_seed(0)
    att = GPTModel(TINY).trf_blocks[0].att.eval()
    x = torch.randn(2, 9, 32)
    b, t, d, h = 2, 9, 32, 4

    def heads(w):
        return w(x).view(b, t, h, d // h).transpose(1, 2)

    q, k, v = heads(att.W_query), heads(att.W_key), heads(att.W_value)
    scores = q @ k.transpose(-2, -1) / (d // h) ** 0.5
    scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
    ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
    torch.testing.assert_close(att(x), att.out_proj(ctx), atol=1e-5, rtol=1e-5)


def test_gpt2_small_has_openai_parameter_count() -> None:
    cfg = GPTConfig(
        vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12, qkv_bias=True
    )
    with torch.device("meta"):
        model = GPTModel(cfg)
    # GPT-2 small with the LM head tied to the token embedding.
    assert model.num_parameters() == 124_439_808
    assert model.tied


def test_untied_head_and_classifier_head_are_separate() -> None:
    untied = GPTModel(GPTConfig(**{**TINY.to_dict(), "tie_weights": False}))
    assert not untied.tied
    clf = GPTModel(GPTConfig(**{**TINY.to_dict(), "n_outputs": 1}))
    assert not clf.tied and clf.out_head.weight.shape == (1, 32)


def test_too_long_input_is_refused() -> None:
    with pytest.raises(ValueError, match="context length 16"):
        GPTModel(TINY)(torch.zeros(1, 17, dtype=torch.long))


def test_greedy_generation_is_deterministic_and_stops_at_eos() -> None:
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    prompt = torch.tensor([[1, 2, 3]])
    a = model.generate(prompt, 6, temperature=0)
    assert a.shape == (1, 9) and torch.equal(a, model.generate(prompt, 6, temperature=0))
    first = int(a[0, 3])
    stopped = model.generate(prompt, 6, temperature=0, eos_id=first)
    assert stopped.shape == (1, 4)


def test_top_k_sampling_only_picks_top_k_tokens() -> None:
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    prompt = torch.tensor([[5]])
    top = set(torch.topk(model(prompt)[0, -1], 3).indices.tolist())
    gen = torch.Generator().manual_seed(0)
    picks = {
        int(model.generate(prompt, 1, temperature=1.0, top_k=3, generator=gen)[0, 1])
        for _ in range(30)
    }
    assert picks <= top
