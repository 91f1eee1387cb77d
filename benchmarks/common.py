"""What the benchmark modules share: figures with median/min/max, interleaved rounds, the
models and the training loops (this pipeline, a plain PyTorch loop over our GPT or
transformers' GPT-2).

Every figure comes from repeats interleaved with the cases it is compared with (round 1 of every
case, then round 2, ...), so a burst of load from other work on a shared machine hits all of
them alike, and a ratio is taken within a round before the median over rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from pipeline.config.paths import CONF_DIR
from pipeline.config.train import TrainConfig
from pipeline.config.validate import validate
from pipeline.model.gpt import GPTConfig, GPTModel


@dataclass
class Context:
    """What every benchmark module receives from the runner."""

    mode: str  # smoke (the test's tiny sizes), quick, full
    workdir: Path  # scratch space, deleted after the run

    def pick(self, sizes: dict[str, Any]) -> Any:
        """The entry of a {mode: value} table for this run's mode."""
        return sizes[self.mode]


@dataclass
class Figure:
    name: str
    unit: str
    samples: list[float]
    target: float | None = None  # a figure to reach: median >= target (at_most: <=)
    note: str = ""
    at_most: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "unit": self.unit,
            "median": statistics.median(self.samples),
            "min": min(self.samples),
            "max": max(self.samples),
            "n": len(self.samples),
        }
        if self.target is not None:
            out["target"] = self.target
            out["at_most"] = self.at_most
            below = out["median"] <= self.target
            out["meets_target"] = below if self.at_most else out["median"] >= self.target
        if self.note:
            out["note"] = self.note
        return out


def interleave(cases: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run every case once per round, round after round; one sample per case and round."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            samples[name].append(case())
    return samples


def ratios(a: list[float], b: list[float]) -> list[float]:
    """a/b within each round."""
    return [x / y for x, y in zip(a, b, strict=True)]


def pipeline_config(overrides: list[str], outputs: Path) -> TrainConfig:
    """The training config the CLI would compose, with Hydra overrides."""
    from hydra import compose, initialize_config_dir

    import pipeline.cli.app  # noqa: F401  (registers the ${project_root:} resolver)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"paths.outputs={outputs}", *overrides])
    return validate(cfg)


def gpt_shape(preset: str, vocab_size: int, **overrides: Any) -> GPTConfig:
    """A causal LM with a model preset's shape (conf/model/<preset>.yaml)."""
    m = pipeline_config([f"model={preset}"], Path("unused")).model
    fields = m.model_dump(exclude={"name", "arch", "init_from", "vocab_size"})
    return GPTConfig(**{**fields, **overrides}, vocab_size=vocab_size)


def train_flops_per_token(shape: GPTConfig, seq: int) -> float:
    """6 * matmul parameters (every parameter but the position embedding; the tied token
    embedding counts once, as the output head's matmul) + 12 * layers * seq * width for the
    attention scores and their weighted sum (PaLM, appendix B)."""
    d, v = shape.emb_dim, shape.vocab_size
    per_block = 4 * d * d + 8 * d * d  # q, k, v, out; fc1, fc2 (biases and norms are noise)
    params = shape.n_layers * per_block + v * d
    return 6 * params + 12 * shape.n_layers * seq * d


def random_batches(vocab: int, batch: int, seq: int, n_batches: int, seed: int = 0) -> DataLoader:
    """Random token rows of length seq + 1, collated by the pipeline's own causal-LM collator."""
    from pipeline.data.loader import Collator

    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, vocab, (batch * n_batches, seq + 1), generator=generator).tolist()
    collate = Collator("causal_lm", pad_id=0, binary=False)
    return DataLoader([(r, None) for r in rows], batch_size=batch, collate_fn=collate)


def seconds_per_step(ends: list[float], warmup: int) -> float:
    """Mean time between the ends of consecutive steps, after `warmup` steps."""
    measured = ends[warmup - 1 :]
    return (measured[-1] - measured[0]) / (len(measured) - 1)


def pipeline_segment(
    model: torch.nn.Module,
    loader: DataLoader,
    cfg: TrainConfig,
    warmup: int,
    tracking_on: bool = True,
    system_metrics_s: float | None = None,
) -> float:
    """Seconds per step of this pipeline's training loop: the product's Trainer settings,
    LightningModule and MLflow logger (into a scratch SQLite store when tracking_on).

    The checkpoint callbacks are left out: they save once per epoch or validation, never within
    the steps measured here, and a 124M checkpoint would only slow the benchmark down. So is
    the model summary, printed once before the first step. system_metrics_s: MLflow's system
    metrics sampled at that interval while the steps run (with tracking on).
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint, ModelSummary

    from pipeline.assembly.trained import Trained
    from pipeline.run.module import GPTLightningModule
    from pipeline.run.trainer import build_trainer
    from pipeline.tracking.client import open_experiment
    from pipeline.tracking.logger import BatchedMLflowLogger
    from pipeline.tracking.runs import start_run
    from pipeline.tracking.uri import default_tracking_uri

    outputs = Path(cfg.paths.outputs)
    run_dir = outputs / "runs" / f"bench-{time.monotonic_ns()}"
    run_dir.mkdir(parents=True)
    logger, tracked = None, None
    if tracking_on:
        uri = cfg.logger.tracking_uri or default_tracking_uri(outputs)
        client, experiment = open_experiment(uri, cfg.logger.experiment_name, outputs)
        config = cfg.model_dump(mode="json")
        tracked = start_run(client, experiment, run_dir.name, config, run_dir, "benchmarks")
        logger = BatchedMLflowLogger(tracked)
    monitor = None
    if tracked and system_metrics_s:
        from pipeline.tracking.monitor import system_monitor

        settings = cfg.logger.model_copy(update={"system_metrics_interval_s": system_metrics_s})
        monitor = system_monitor(tracked, settings)
    deterministic = torch.are_deterministic_algorithms_enabled()
    trainer, _ = build_trainer(cfg, run_dir, logger, Trained(model, None), False, [])
    ends: list[float] = []

    def batch_end(*args: Any) -> None:
        synchronize()
        ends.append(time.perf_counter())

    clock = pl.Callback()
    clock.on_train_batch_end = batch_end
    kept = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint | ModelSummary)]
    trainer.callbacks = [c for c in kept if type(c).__name__ != "CheckpointExtras"] + [clock]
    module = GPTLightningModule(model, cfg.optim)
    try:
        trainer.fit(module, train_dataloaders=loader)
    finally:
        # Lightning's deterministic=True is process-wide; the next case must not inherit it.
        torch.use_deterministic_algorithms(deterministic)
        if monitor:
            monitor.finish()
    flush = 0.0
    if tracked:
        # Metrics are buffered and sent in batches; the last batch belongs to these steps.
        start = time.perf_counter()
        logger.finalize("FINISHED")
        flush = (time.perf_counter() - start) / len(ends)
        tracked.client.set_terminated(tracked.run_id, "FINISHED")
    return seconds_per_step(ends, warmup) + flush


def plain_segment(
    model: torch.nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    loader: DataLoader,
    cfg: TrainConfig,
    warmup: int,
) -> float:
    """Seconds per step of a hand-written loop doing the same work as the pipeline's step:
    forward, loss, backward, gradient clipping, the same optimizer and lr schedule, and bf16
    autocast when cfg.trainer.precision is bf16-mixed."""
    from pipeline.losses import lm_loss
    from pipeline.run.module import build_optimizer, lr_lambda

    model.train()
    o = cfg.optim
    optimizer = build_optimizer(model, o)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(o.warmup_steps, len(loader), o.scheduler, o.min_lr_ratio)
    )
    device = next(model.parameters()).device.type
    bf16 = cfg.trainer.precision == "bf16-mixed"
    ends = []
    for batch in loader:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = lm_loss(forward(batch["input_ids"]), batch["targets"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.gradient_clip_val)
        optimizer.step()
        schedule.step()
        synchronize()
        ends.append(time.perf_counter())
    return seconds_per_step(ends, warmup)


def synchronize() -> None:
    """Wait for queued CUDA work, so that a step's time is its own."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def ours(shape: GPTConfig) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    model = GPTModel(shape)
    return model, model


def transformers_gpt2(
    shape: GPTConfig,
) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """transformers' GPT2LMHeadModel of the same shape, with PyTorch's SDPA attention."""
    import transformers

    from pipeline.weights.gpt2 import hf_config

    # Random tokens have no special ones; GPT2Config's default ids (50256) would lie outside a
    # small vocabulary.
    config = transformers.GPT2Config(
        **hf_config(shape, None, None), bos_token_id=0, eos_token_id=0, attn_implementation="sdpa"
    )
    model = transformers.GPT2LMHeadModel(config)
    return model, lambda ids: model(input_ids=ids).logits


@dataclass
class Peak:
    """The matrix-multiply throughput of this machine, measured beside the models."""

    n: int
    device: str
    repeats: int = 5
    _operands: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def flops_per_s(self, dtype: torch.dtype) -> float:
        """The fastest of `repeats` products: a peak is what the machine can do, and a burst of
        load from other programs only ever slows a product down."""
        if dtype not in self._operands:
            g = torch.Generator().manual_seed(0)
            a, b = (torch.randn(self.n, self.n, generator=g).to(self.device, dtype) for _ in "ab")
            self._operands[dtype] = (a, b)
            a @ b  # warm-up: kernels chosen, memory touched
        a, b = self._operands[dtype]
        fastest = float("inf")
        for _ in range(self.repeats):
            synchronize()
            start = time.perf_counter()
            a @ b
            synchronize()
            fastest = min(fastest, time.perf_counter() - start)
        return 2 * self.n**3 / fastest
