"""Sparse attention (model.attention) and attention sparsity measured
(sparsity.measure.attention): each pattern's mask against a brute-force one, every kernel
against the masked reference (values and gradients), dense equivalence, packed rows, what a
checkpoint and an ONNX export keep, the exports that refuse a pattern, and the measurement
against probabilities known in closed form."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import transformers

from pipeline.assembly.restore import load_trained
from pipeline.assembly.trained import Trained
from pipeline.data.tokenizer import TextTokenizer
from pipeline.errors import UserError
from pipeline.formats import export_trained
from pipeline.model.attention import Attention, blocked, flex, masked
from pipeline.model.gpt import GPTConfig, GPTModel
from pipeline.model.hf import HFModel
from pipeline.sparsity.attention import AttentionStats, attention_probabilities, examples
from tests.helpers import TINY, app_config, llama_config, train_config
from tests.test_pretrained import check_onnx

PATTERNS = [
    Attention("sliding_window", 3),
    Attention("local_global", 3, 2),
    Attention("local_global", 4, 5),
    Attention("strided", 3),
]
SHAPES = [2, 3, 7, 12, 13]


def brute_force(attention: Attention, t: int) -> torch.Tensor:
    allowed = torch.zeros(t, t, dtype=torch.bool)
    for i in range(t):
        for j in range(i + 1):
            near = i - j < attention.window
            if attention.pattern == "sliding_window":
                allowed[i, j] = near
            elif attention.pattern == "local_global":
                allowed[i, j] = near or j < attention.global_tokens
            else:
                allowed[i, j] = near or (i - j) % attention.window == 0
    return allowed


@pytest.mark.parametrize("attention", PATTERNS, ids=str)
def test_each_pattern_s_mask_is_the_brute_force_one(attention: Attention) -> None:
    for t in SHAPES:
        assert torch.equal(attention.mask(torch.arange(t)), brute_force(attention, t)), t
    # In a packed row, each example gets the pattern from its own first token, and no other.
    positions = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6])
    expected = torch.zeros(12, 12, dtype=torch.bool)
    expected[:5, :5] = brute_force(attention, 5)
    expected[5:, 5:] = brute_force(attention, 7)
    assert torch.equal(attention.mask(positions), expected)


@pytest.mark.parametrize("attention", PATTERNS, ids=str)
def test_every_kernel_computes_the_masked_reference(attention: Attention) -> None:
    torch.manual_seed(0)
    for t in SHAPES:
        q, k, v = (torch.randn(2, 3, t, 8, dtype=torch.float64, requires_grad=True) for _ in "qkv")
        reference = masked(q, k, v, attention)
        grads = torch.autograd.grad(reference.square().sum(), (q, k, v))
        if attention.pattern != "strided":
            out = blocked(q, k, v, attention)
            assert (out - reference).abs().max() < 1e-12, t
            for got, want in zip(
                torch.autograd.grad(out.square().sum(), (q, k, v)), grads, strict=True
            ):
                assert (got - want).abs().max() < 1e-12, t
        # FlexAttention runs uncompiled and forward-only on a CPU: enough to check its mask.
        with torch.no_grad():
            out = flex(q.float(), k.float(), v.float(), attention, compiled=False)
        assert (out - reference.float()).abs().max() < 1e-5, t


def gpt(attention: Attention | None = None, **shape) -> GPTModel:
    torch.manual_seed(0)
    cfg = GPTConfig(
        **{
            "vocab_size": 50,
            "context_length": 32,
            "emb_dim": 32,
            "n_heads": 4,
            "n_layers": 2,
            "attention": attention or Attention(),
            **shape,
        }
    )
    return GPTModel(cfg).eval()


@pytest.mark.parametrize("pattern", ["sliding_window", "local_global", "strided"])
def test_a_window_as_long_as_the_sequence_is_the_dense_model(pattern: str) -> None:
    dense = gpt()
    sparse = gpt(Attention(pattern, 20, 1 if pattern == "local_global" else 0))
    ids = torch.randint(0, 50, (3, 20))
    assert (sparse(ids) - dense(ids)).abs().max() < 1e-6
    # ...and a shorter window is not.
    short = gpt(Attention(pattern, 4, 1 if pattern == "local_global" else 0))
    assert (short(ids) - dense(ids)).abs().max() > 1e-3


def test_a_packed_row_computes_each_example_as_if_alone() -> None:
    model = gpt(Attention("local_global", 3, 1))
    a, b = torch.randint(0, 50, (1, 6)), torch.randint(0, 50, (1, 9))
    positions = torch.cat([torch.arange(6), torch.arange(9)])[None]
    packed = model(torch.cat([a, b], dim=1), position_ids=positions)
    assert (packed[:, :6] - model(a)).abs().max() < 1e-5
    assert (packed[:, 6:] - model(b)).abs().max() < 1e-5


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.train(["free prize call now", "see you at noon"] * 40, 300, 1)


def test_exports_that_cannot_express_a_pattern_refuse_it(tmp_path: Path, tokenizer) -> None:
    trained = Trained(
        gpt(Attention("sliding_window", 4), vocab_size=tokenizer.vocab_size), tokenizer
    )
    for fmt in ("hf", "gguf"):
        with pytest.raises(UserError, match=rf"includes {fmt}.*pattern=sliding_window.*onnx"):
            export_trained(trained, [fmt], tmp_path / fmt)
        assert not (tmp_path / fmt).exists()
    with pytest.raises(UserError, match=r"export.formats includes hf.*sliding_window"):
        app_config(["model.attention.pattern=sliding_window"], tmp_path)
    with pytest.raises(UserError, match=r"model.attention.pattern.*dense with model.arch=hf"):
        app_config(
            [
                "model=hf",
                f"model.init_from={tmp_path}",
                "model.attention.pattern=strided",
                "export.formats=[weights]",
            ],
            tmp_path,
        )


def uniform_attention(model: torch.nn.Module) -> None:
    """Queries of zero: every query spreads its attention evenly over the keys it may see."""
    for name, param in model.named_parameters():
        if name.endswith(("W_query.weight", "W_query.bias", "q_proj.weight")):
            torch.nn.init.zeros_(param)


def expected_stats(allowed: torch.Tensor, eps: float) -> tuple[float, float]:
    """Uniform attention over each row's allowed keys: the share below eps among the causal
    entries, and the mean entropy log(allowed keys)."""
    counts = allowed.sum(-1).double()
    t = len(counts)
    below = sum(
        (t_allowed if 1 / t_allowed < eps else 0) + (i + 1 - t_allowed)
        for i, t_allowed in enumerate(counts.tolist())
    )
    return below / (t * (t + 1) / 2), float(counts.log().mean())


@pytest.mark.parametrize("attention", [Attention(), Attention("sliding_window", 5)], ids=str)
def test_attention_sparsity_is_measured_exactly_on_our_gpt(attention: Attention) -> None:
    model = gpt(attention)
    uniform_attention(model)
    stats = AttentionStats(eps=0.1)
    stats.add(attention_probabilities(model, torch.randint(0, 50, (1, 16))))
    share, entropy = expected_stats(attention.mask(torch.arange(16)), 0.1)
    for (layer, head), (got_share, got_entropy) in stats.table().items():
        assert got_share == pytest.approx(share, abs=1e-9), (layer, head)
        assert got_entropy == pytest.approx(entropy, abs=1e-5), (layer, head)
    assert set(stats.metrics()) >= {"layer1.head3/below_eps", "layer1/entropy"}


def test_attention_sparsity_is_measured_exactly_on_a_transformers_llama() -> None:
    model = HFModel(transformers.LlamaForCausalLM(llama_config(64)).eval(), None)
    uniform_attention(model)
    stats = AttentionStats(eps=0.1)
    stats.add(attention_probabilities(model, torch.randint(0, 64, (1, 12))))
    share, entropy = expected_stats(Attention().mask(torch.arange(12)), 0.1)
    assert len(stats.table()) == 8
    for got_share, got_entropy in stats.table().values():
        assert (got_share, got_entropy) == pytest.approx((share, entropy), abs=1e-5)
    # The model attends with its fused kernel again afterwards.
    assert model.hf.config._attn_implementation == "sdpa"


def test_a_packed_batch_is_measured_one_example_at_a_time() -> None:
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 8, 9, 0], [1, 2, 3, 0, 0, 0]]),
        "lengths": torch.tensor([5, 3]),
        "position_ids": torch.tensor([[0, 1, 0, 1, 2, 0], [0, 1, 2, 0, 0, 0]]),
    }
    assert [ids.tolist() for ids in examples(batch)] == [[5, 6], [7, 8, 9], [1, 2, 3]]
    del batch["position_ids"]
    assert [ids.tolist() for ids in examples(batch)] == [[5, 6, 7, 8, 9], [1, 2, 3]]


@pytest.mark.slow
def test_a_sliding_window_run_keeps_its_pattern_in_checkpoint_onnx_and_measurements(
    tmp_path: Path,
) -> None:
    cfg = app_config(
        [
            *TINY,
            "trainer.max_epochs=1",
            "model.attention.pattern=sliding_window",
            "model.attention.window=8",
            "sparsity.measure.attention=true",
            "sparsity.measure.attention_eps=0.01",
            "export.formats=[weights,onnx]",
        ],
        tmp_path / "outputs",
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record = train_config(cfg, run_dir)
    trained = load_trained(run_dir)
    assert trained.model.cfg.attention == Attention("sliding_window", 8)
    check_onnx(
        Path(record["paths"]["exports"]["onnx"]) / "model.onnx",
        trained.model,
        trained.tokenizer.vocab_size,
    )
    # The report's table: every layer and head of gpt-tiny; rows longer than the window have
    # pattern-excluded entries, so no head is measured dense.
    table = (run_dir / "sparsity" / "attention_sparsity.md").read_text().splitlines()[2:]
    assert len(table) == 2 * 2
    assert all(float(line.split("|")[3].strip().rstrip("%")) > 0 for line in table)
    import mlflow

    # A query sees at most 8 keys: its entropy is at most log(8).
    client = mlflow.MlflowClient(record["tracking_uri"])
    history = client.get_metric_history(record["run_id"], "attention_sparsity/layer0/entropy")
    assert history and all(0 < m.value <= math.log(8) + 1e-6 for m in history)
