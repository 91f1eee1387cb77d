"""MLflow logging overhead per training step at the default logging interval (issue figure 6),
and the cost of MLflow's system metrics.

The pipeline's training loop on a small model, with MLflow tracking on and off, and on with
system metrics sampled every second (ten times as often as the default, so that a short
segment holds samples), interleaved. Tracking on includes sending the buffered metrics at the
end, spread over the steps.
"""

from __future__ import annotations

import torch

from benchmarks.common import (
    Context,
    Figure,
    gpt_shape,
    interleave,
    ours,
    pipeline_config,
    pipeline_segment,
    random_batches,
)

TITLE = "MLflow logging overhead"
# preset, vocab, batch, seq, steps, rounds
SIZES = {
    "smoke": ("gpt-tiny", 256, 2, 32, 12, 2),
    "quick": ("gpt-mini", 4096, 8, 64, 20, 3),
    "full": ("gpt-mini", 4096, 8, 64, 60, 4),
}
WARMUP = 2
SAMPLE_EVERY_S = 1.0


def run(ctx: Context) -> list[Figure]:
    preset, vocab, batch, seq, steps, rounds = ctx.pick(SIZES)
    cfg = pipeline_config(
        ["trainer=cpu", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"],
        ctx.workdir / "outputs",
    )
    interval = cfg.trainer.log_every_n_steps
    loader = random_batches(vocab, batch, seq, steps)
    torch.manual_seed(0)
    model, _ = ours(gpt_shape(preset, vocab))
    s = interleave(
        {
            "on": lambda: pipeline_segment(model, loader, cfg, WARMUP, tracking_on=True),
            "off": lambda: pipeline_segment(model, loader, cfg, WARMUP, tracking_on=False),
            "system": lambda: pipeline_segment(
                model, loader, cfg, WARMUP, tracking_on=True, system_metrics_s=SAMPLE_EVERY_S
            ),
        },
        rounds,
    )
    system = [1000 * (on_sys - on) for on_sys, on in zip(s["system"], s["on"], strict=True)]
    overhead = [1000 * (on - off) for on, off in zip(s["on"], s["off"], strict=True)]
    return [
        Figure(
            f"{preset} step, tracking on ({batch}x{seq} tokens)", "ms", [1000 * x for x in s["on"]]
        ),
        Figure(f"{preset} step, tracking off", "ms", [1000 * x for x in s["off"]]),
        Figure(
            f"MLflow overhead per step (logging every {interval} steps)",
            "ms",
            overhead,
            note="step time with tracking minus without, within each round",
        ),
        Figure(
            "MLflow overhead, share of the step",
            "%",
            [100 * (on / off - 1) for on, off in zip(s["on"], s["off"], strict=True)],
        ),
        Figure(
            f"System metrics overhead per step (sampled every {SAMPLE_EVERY_S:g} s)",
            "ms",
            system,
            note="step time with tracking and system metrics minus tracking alone; the default "
            "samples every 10 s, a tenth of this",
        ),
    ]
