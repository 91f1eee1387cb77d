"""With a GPU (issue figure 7; skipped otherwise): the pipeline's tokens/s and MFU at
bf16-mixed against the measured bf16 matrix-multiply peak, with torch.compile off and on; and,
on compute capability >= 8.0, 2:4 sparse versus dense fp16 inference (one Linear layer, and the
whole forward) through the pipeline's `sparsity.accelerate` conversion.
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
    if torch.cuda.get_device_capability() >= (8, 0):
        figures += semi_structured(shape, batch, seq, rounds)
    return figures


def semi_structured(shape, batch: int, seq: int, rounds: int) -> list[Figure]:
    """Seconds of a 2:4-pruned model's fc1 and of its whole forward, dense fp16 versus
    semi-structured sparse kernels."""
    import copy

    from pipeline.config.sparsity import SparsityConfig
    from pipeline.sparsity.accelerate import accelerated
    from pipeline.sparsity.pruner import Pruner
    from pipeline.sparsity.targets import target_layers

    model, _ = ours(shape)
    cfg = SparsityConfig(name="nm_2_4", method="magnitude", pattern="2:4")
    layers = target_layers(model, cfg.target_modules)
    Pruner(cfg, model, layers).prune_to(0.5)
    dense = copy.deepcopy(model).to("cuda", torch.float16).eval()
    sparse = accelerated(model, layers)
    ids = torch.randint(0, shape.vocab_size, (batch, seq), device="cuda")
    x = torch.randn(batch * seq, shape.emb_dim, device="cuda", dtype=torch.float16)

    def timed(fn, repeats: int = 20) -> float:
        with torch.no_grad():
            fn()
            torch.cuda.synchronize()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                fn()
            end.record()
            torch.cuda.synchronize()
        return start.elapsed_time(end) / repeats / 1000

    fc1 = "trf_blocks.0.ff.fc1"
    dense_fc1 = dense.get_submodule(fc1)
    sparse_fc1 = sparse.get_submodule(fc1)
    s = interleave(
        {
            "linear dense": lambda: timed(lambda: dense_fc1(x)),
            "linear 2:4": lambda: timed(lambda: sparse_fc1(x)),
            "forward dense": lambda: timed(lambda: dense(ids)),
            "forward 2:4": lambda: timed(lambda: sparse(ids)),
        },
        rounds,
    )
    name = f"fp16 inference ({batch}x{seq} tokens)"
    return [
        Figure(
            f"{name} fc1 dense / 2:4 time", "speedup", ratios(s["linear dense"], s["linear 2:4"])
        ),
        Figure(
            f"{name} forward dense / 2:4 time",
            "speedup",
            ratios(s["forward dense"], s["forward 2:4"]),
        ),
    ]
