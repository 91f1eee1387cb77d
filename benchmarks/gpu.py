"""With a GPU (issue figure 7; skipped otherwise): the pipeline's tokens/s and MFU at
bf16-mixed against the measured bf16 matrix-multiply peak, with torch.compile off and on.

2:4 sparse versus dense inference joins here when sparsity lands.
"""

from __future__ import annotations

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
    random_batches,
    ratios,
    train_flops_per_token,
)

TITLE = "GPU: tokens/s and MFU, torch.compile off and on"
# preset, vocab, batch, seq, warmup, steps, rounds, matmul size
SIZES = {
    "smoke": ("gpt-tiny", 256, 4, 64, 2, 3, 2, 1024),
    "quick": ("gpt2-small", 50257, 8, 512, 3, 10, 3, 4096),
    "full": ("gpt2-small", 50257, 16, 1024, 5, 20, 3, 8192),
}


def skip_reason() -> str | None:
    return None if torch.cuda.is_available() else "no CUDA device on this machine"


def run(ctx: Context) -> list[Figure]:
    preset, vocab, batch, seq, warmup, steps, rounds, n = ctx.pick(SIZES)
    shape = gpt_shape(preset, vocab)
    loader = random_batches(vocab, batch, seq, warmup + steps)
    cfg = pipeline_config(
        ["trainer=gpu", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"],
        ctx.workdir / "outputs",
    )
    torch.manual_seed(0)
    eager, _ = ours(shape)
    compiled, _ = ours(shape)
    compiled.compile()  # what trainer.compile=true does
    peak = Peak(n, "cuda")
    tokens = batch * seq
    s = interleave(
        {
            "eager": lambda: tokens / pipeline_segment(eager, loader, cfg, warmup),
            "compiled": lambda: tokens / pipeline_segment(compiled, loader, cfg, warmup),
            "peak": lambda: peak.flops_per_s(torch.bfloat16),
        },
        rounds,
    )
    flops = train_flops_per_token(shape, seq)
    name = f"{preset} bf16-mixed ({batch}x{seq} tokens)"
    figures = [Figure(f"matmul peak bf16 ({n}^3)", "TFLOP/s", [x / 1e12 for x in s["peak"]])]
    for case in ("eager", "compiled"):
        figures += [
            Figure(f"{name} tokens/s, {case}", "tokens/s", s[case]),
            Figure(
                f"{name} MFU, {case}",
                "%",
                [100 * t * flops / p for t, p in zip(s[case], s["peak"], strict=True)],
            ),
        ]
    figures.append(Figure(f"{name} compiled / eager", "ratio", ratios(s["compiled"], s["eager"])))
    return figures
