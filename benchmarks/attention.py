"""Sparse attention (model.attention.pattern=sliding_window, window 256) against dense causal
attention (issue 17): forward + backward of the attention alone at 512 to 4096 tokens, a whole
training step of the pipeline's own loop on a gpt-mini-shaped model.

The attention is timed on GPT-2 small's head shape (12 heads of 64) for one sequence. On a
CPU the sliding window runs the pipeline's blocked kernel (exact; SDPA over chunks of the
window); on a GPU, FlexAttention. Dense is PyTorch's fused causal SDPA, the default path.
Memory is not a figure: both kernels are fused and keep O(tokens) per head for the backward
(dense SDPA its log-sum-exp, the window its chunks), and a process's peak resident set did not
resolve the difference from torch's own import.
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import Context, Figure, interleave, pipeline_config, ratios, synchronize
from pipeline.model.attention import Attention, attend

TITLE = "Sparse attention"
WINDOW = 256
HEADS, HEAD_DIM = 12, 64
# lengths of the attention-only figures, and the length of the training-step figure
SIZES = {
    "smoke": ([512], 256, 1),
    "quick": ([1024, 4096], 2048, 2),
    "full": ([512, 1024, 2048, 4096], 4096, 3),
}


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _qkv(tokens: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(
        torch.randn(1, HEADS, tokens, HEAD_DIM, generator=g).to(_device()).requires_grad_()
        for _ in "qkv"
    )


def attention_seconds(tokens: int, attention: Attention, repeats: int = 3) -> float:
    """Fastest of `repeats` forward + backward passes of the attention alone."""
    q, k, v = _qkv(tokens)
    best = float("inf")
    for _ in range(repeats + 1):  # the first warms up (and compiles FlexAttention on a GPU)
        start = time.perf_counter()
        attend(q, k, v, attention).sum().backward()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def step_seconds(ctx: Context, tokens: int, attention: Attention) -> float:
    """Seconds per optimizer step of the pipeline's training loop: gpt-mini's shape with a
    context of `tokens`, one sequence a batch."""
    from benchmarks.common import gpt_shape, pipeline_segment, random_batches
    from pipeline.model.gpt import GPTModel

    cfg = pipeline_config(
        ["model=gpt-mini", f"model.context_length={tokens}", "trainer.enable_progress_bar=false"],
        ctx.workdir,
    )
    shape = gpt_shape("gpt-mini", 4096, context_length=tokens, attention=attention)
    model = GPTModel(shape)
    loader = random_batches(shape.vocab_size, 1, tokens - 1, 5)
    return pipeline_segment(model, loader, cfg, warmup=2, tracking_on=False)


def run(ctx: Context) -> list[Figure]:
    lengths, step_tokens, rounds = ctx.pick(SIZES)
    dense, window = Attention(), Attention("sliding_window", WINDOW)
    figures = []
    for tokens in lengths:
        s = interleave(
            {
                "dense": lambda t=tokens: attention_seconds(t, dense),
                "window": lambda t=tokens: attention_seconds(t, window),
            },
            rounds,
        )
        figures.append(Figure(f"attention fwd+bwd, {tokens} tokens, dense", "s", s["dense"]))
        figures.append(Figure(f"attention fwd+bwd, {tokens} tokens, window", "s", s["window"]))
        target = 2.0 if tokens >= 4096 else 1.0 if tokens >= 2048 else None
        figures.append(
            Figure(
                f"attention speed-up, {tokens} tokens: dense / window {WINDOW}",
                "ratio",
                ratios(s["dense"], s["window"]),
                target,
            )
        )
    s = interleave(
        {
            "dense": lambda: step_seconds(ctx, step_tokens, dense),
            "window": lambda: step_seconds(ctx, step_tokens, window),
        },
        rounds,
    )
    note = f"gpt-mini shape (4 layers, 4 heads of 32), context {step_tokens}, batch 1"
    figures.append(
        Figure(f"training step, {step_tokens} tokens, dense", "s", s["dense"], note=note)
    )
    figures.append(Figure(f"training step, {step_tokens} tokens, window", "s", s["window"]))
    figures.append(
        Figure(
            f"training step speed-up, {step_tokens} tokens: dense / window {WINDOW}",
            "ratio",
            ratios(s["dense"], s["window"]),
        )
    )
    return figures
