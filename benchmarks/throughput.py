"""Training throughput and model FLOP utilisation (issue figures 1 and 2).

Per model shape, interleaved round by round: this pipeline (Lightning, MLflow tracking on) at
fp32 and bf16-mixed, a plain PyTorch loop over the same model, transformers' GPT2LMHeadModel
of the same shape in that plain loop, and the fp32 and bf16 matrix-multiply peak of the machine.
Then the framework's fixed cost per step: pipeline minus plain loop on a tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks.common import (
    Context,
    Figure,
    Peak,
    gpt_shape,
    interleave,
    ours,
    pipeline_config,
    pipeline_segment,
    plain_segment,
    random_batches,
    ratios,
    train_flops_per_token,
    transformers_gpt2,
)
from pipeline.config.train import TrainConfig

TITLE = "Training throughput and MFU"


@dataclass(frozen=True)
class Size:
    preset: str  # conf/model/<preset>.yaml gives the shape
    vocab: int
    batch: int
    seq: int
    warmup: int
    steps: int  # timed, per case and round
    rounds: int
    bf16: bool  # also measure the pipeline at bf16-mixed


# Short segments and many rounds: the load of a shared machine comes and goes over seconds,
# so cases measured seconds apart see the same load, and the ratio of a round holds.
SIZES = {
    "smoke": ([Size("gpt-tiny", 256, 2, 32, 1, 2, 2, True)], 256),
    "quick": ([Size("gpt-mini", 8192, 8, 128, 1, 3, 4, True)], 1024),
    "full": (
        [
            Size("gpt2-small", 50257, 4, 128, 2, 1, 3, True),
            Size("gpt-mini", 8192, 16, 128, 1, 3, 6, False),
        ],
        2048,
    ),
}


# The framework's fixed cost per step, on a model whose compute is too small to hide it: many
# short steps, so the load of a shared machine averages out within each segment.
OVERHEAD = {
    "smoke": Size("gpt-tiny", 256, 2, 32, 2, 10, 2, False),
    "quick": Size("gpt-tiny", 256, 2, 32, 5, 100, 3, False),
    "full": Size("gpt-tiny", 256, 2, 32, 5, 200, 5, False),
}


def run(ctx: Context) -> list[Figure]:
    sizes, peak_n = ctx.pick(SIZES)
    peak = Peak(peak_n, "cpu")
    figures: list[Figure] = []
    for size in sizes:
        figures += measure(ctx, size, peak)
    return figures + overhead(ctx, ctx.pick(OVERHEAD))


def config(ctx: Context, size: Size, precision: str = "32-true") -> TrainConfig:
    return pipeline_config(
        [
            "trainer=cpu",
            f"trainer.precision={precision}",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            f"optim.batch_size={size.batch}",
        ],
        ctx.workdir / "outputs",
    )


def overhead(ctx: Context, size: Size) -> list[Figure]:
    """Milliseconds per step that this pipeline adds to the plain loop over the same model."""
    loader = random_batches(size.vocab, size.batch, size.seq, size.warmup + size.steps)
    cfg = config(ctx, size)
    model, forward = ours(gpt_shape(size.preset, size.vocab))
    s = interleave(
        {
            "pipeline": lambda: pipeline_segment(model, loader, cfg, size.warmup),
            "plain": lambda: plain_segment(model, forward, loader, cfg, size.warmup),
        },
        size.rounds,
    )
    return [
        Figure(
            f"framework overhead per step, {size.preset} ({size.batch}x{size.seq} tokens)",
            "ms",
            [1000 * (a - b) for a, b in zip(s["pipeline"], s["plain"], strict=True)],
            note="pipeline step minus plain step (Lightning, the pipeline's callbacks, MLflow "
            f"logging every 10 steps), {size.steps} steps per repeat",
        )
    ]


def measure(ctx: Context, size: Size, peak: Peak) -> list[Figure]:
    shape = gpt_shape(size.preset, size.vocab)
    n_batches = size.warmup + size.steps
    loader = random_batches(size.vocab, size.batch, size.seq, n_batches)
    tokens = size.batch * size.seq
    fp32, bf16 = config(ctx, size), config(ctx, size, "bf16-mixed")
    torch.manual_seed(0)
    model, forward = ours(shape)
    hf_model, hf_forward = transformers_gpt2(shape)
    cases = {
        "pipeline fp32": lambda: tokens / pipeline_segment(model, loader, fp32, size.warmup),
        "plain fp32": lambda: tokens / plain_segment(model, forward, loader, fp32, size.warmup),
        "transformers fp32": lambda: (
            tokens / plain_segment(hf_model, hf_forward, loader, fp32, size.warmup)
        ),
        "peak fp32": lambda: peak.flops_per_s(torch.float32),
    }
    if size.bf16:
        cases["pipeline bf16-mixed"] = lambda: (
            tokens / pipeline_segment(model, loader, bf16, size.warmup)
        )
        cases["peak bf16"] = lambda: peak.flops_per_s(torch.bfloat16)
    s = interleave(cases, size.rounds)

    name = f"{size.preset} ({size.batch}x{size.seq} tokens)"
    flops = train_flops_per_token(shape, size.seq)
    figures = [
        Figure(f"{name} tokens/s: {case}", "tokens/s", s[case])
        for case in cases
        if "peak" not in case
    ]
    figures += [
        Figure(
            f"{name} pipeline / plain PyTorch",
            "ratio",
            ratios(s["pipeline fp32"], s["plain fp32"]),
            target=0.97,
        ),
        Figure(
            f"{name} pipeline / transformers",
            "ratio",
            ratios(s["pipeline fp32"], s["transformers fp32"]),
            target=1.0,
        ),
        Figure(f"matmul peak fp32 ({peak.n}^3)", "GFLOP/s", [x / 1e9 for x in s["peak fp32"]]),
        Figure(
            f"{name} MFU fp32",
            "%",
            [100 * t * flops / p for t, p in zip(s["pipeline fp32"], s["peak fp32"], strict=True)],
        ),
    ]
    if size.bf16:
        figures += [
            Figure(f"matmul peak bf16 ({peak.n}^3)", "GFLOP/s", [x / 1e9 for x in s["peak bf16"]]),
            Figure(
                f"{name} MFU bf16-mixed",
                "%",
                # Against the faster peak: bf16-mixed keeps some matmuls in fp32, and a CPU
                # without native bf16 (no AVX-512 BF16/AMX) emulates bf16 slower than fp32.
                [
                    100 * t * flops / max(p16, p32)
                    for t, p16, p32 in zip(
                        s["pipeline bf16-mixed"], s["peak bf16"], s["peak fp32"], strict=True
                    )
                ],
            ),
            Figure(
                f"{name} pipeline bf16-mixed / fp32",
                "ratio",
                ratios(s["pipeline bf16-mixed"], s["pipeline fp32"]),
            ),
        ]
    return figures
