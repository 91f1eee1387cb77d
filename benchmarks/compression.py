"""Gradient compression between DDP ranks: the demo trained on 2 CPU ranks (gloo) without
compression, with top-k at 1% and with PowerSGD; the final validation loss of each against the
uncompressed run, the bytes a rank sends per step against the dense all-reduce (as the run
logged them to MLflow), and the wall time. Each run is a real `python -m pipeline.train
trainer=ddp` command; one measurement each (seeded, deterministic)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from benchmarks.common import Context, Figure
from pipeline.config.paths import PROJECT_ROOT

TITLE = "Gradient compression between ranks"
# Two DDP runs of the tiniest model still take most of a minute: not for the smoke test.
MODES = ("quick", "full")
SIZES = {
    # About as many steps as the demo (150): top-k needs them (see docs/scaling-out.md).
    "quick": [
        "model=gpt-tiny",
        "data.synthetic_examples=1000",
        "optim.batch_size=8",
        "trainer.max_epochs=3",
    ],
    "full": [],  # the demo as `make train` runs it: gpt-mini, 3000 messages, 4 epochs
}
METHODS = {
    "none": [],
    "topk": ["trainer.gradient_compression=topk", "trainer.topk_ratio=0.01"],
    "powersgd": ["trainer.gradient_compression=powersgd", "trainer.powersgd_rank=4"],
}
FIXED = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.enable_progress_bar=false",
    "logger.log_models=none",
    "logger.system_metrics=false",
    "export.formats=[]",
]


def train(overrides: list[str], outputs: Path) -> tuple[dict, float]:
    """One DDP run; its run.json, and rank 1's weights hash checked against rank 0's."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.train", f"paths.outputs={outputs}", *overrides],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"training failed: {done.stderr[-2000:]}")
    (run_dir,) = {p.parent for p in outputs.glob("runs/*/*/*/run.json")}
    ranks = [json.loads((run_dir / f).read_text()) for f in ("run.json", "run.rank1.json")]
    if ranks[0]["weights_sha256"] != ranks[1]["weights_sha256"]:
        raise RuntimeError(f"the ranks of {run_dir} ended with different weights")
    return ranks[0], seconds


def bytes_per_step(record: dict, outputs: Path) -> tuple[float, float]:
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    sent, dense = (
        [m.value for m in client.get_metric_history(record["run_id"], f"comm/bytes_{k}")]
        for k in ("sent", "dense")
    )
    return statistics.median(sent), statistics.median(dense)


def run(ctx: Context) -> list[Figure]:
    size = ctx.pick(SIZES)
    what = " ".join(size) or "the demo (gpt-mini, 3000 messages, 4 epochs)"
    results = {}
    for method, extra in METHODS.items():
        outputs = ctx.workdir / method
        results[method] = (*train([*FIXED, *size, *extra], outputs), outputs)
    baseline = results["none"][0]["metrics"]["val/loss"]
    figures = [Figure(f"final val loss, no compression ({what})", "loss", [baseline])]
    for method in ("topk", "powersgd"):
        record, seconds, outputs = results[method]
        loss = record["metrics"]["val/loss"]
        sent, dense = bytes_per_step(record, outputs)
        figures += [
            Figure(f"final val loss, {method}", "loss", [loss]),
            # Within 2% of the uncompressed loss: loss <= 1.02 x baseline.
            Figure(
                f"{method}: uncompressed / compressed val loss",
                "ratio",
                [baseline / loss],
                target=round(1 / 1.02, 4),
            ),
            Figure(f"{method}: bytes a rank sends per step", "bytes", [sent]),
            Figure(
                f"{method}: dense / sent bytes per step",
                "ratio",
                [dense / sent],
                target=10.0 if method == "topk" else None,
                note=f"dense: {dense:,.0f} bytes",
            ),
            Figure(f"{method}: wall time / uncompressed", "ratio", [seconds / results["none"][1]]),
        ]
    figures.append(Figure("wall time, no compression", "s", [results["none"][1]]))
    return figures
