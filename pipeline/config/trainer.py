"""conf/trainer/: device and loop settings (Lightning's names) and checkpointing."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config.base import Group, fail

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


class CheckpointConfig(Group):
    monitor: str | None = "val/loss"
    """The metric that picks the best checkpoint (null: keep the latest)."""
    mode: Literal["min", "max"] = "min"
    """Whether the monitored metric is better low or high."""
    save_top_k: int = Field(default=1, ge=-1)
    """Best k checkpoints kept on the monitored metric (-1: all), plus last.ckpt."""
    save_last: bool = True
    """Keep last.ckpt, the newest state (what resume continues from)."""
    every_n_train_steps: int | None = Field(default=None, gt=0)
    """Also write last.ckpt every N optimizer steps (null: only at validation), so a crash
    mid-epoch loses at most N steps."""


class TrainerConfig(Group):
    name: str
    """The preset's name (default, cpu, gpu, ddp, fsdp)."""
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"]
    """auto picks a GPU when there is one."""
    devices: int | Literal["auto"] = 1
    """Devices (processes) per node."""
    num_nodes: int = Field(default=1, ge=1)
    """Machines."""
    strategy: str = "auto"
    """Lightning's strategy: auto, ddp, fsdp, ..."""
    precision: Literal[PRECISIONS] = "32-true"  # type: ignore[valid-type]
    """16-mixed needs a GPU."""
    max_epochs: int | None = Field(default=None, ge=1)
    """Epochs (null: max_steps decides)."""
    max_steps: int = Field(default=-1, ge=-1)
    """Optimizer steps (-1: no step limit, max_epochs decides)."""
    val_check_interval: int | float = 1.0
    """Validate every N training batches (int) or this fraction of an epoch (float)."""
    log_every_n_steps: int = Field(default=10, gt=0)
    """Steps between logged training metrics."""
    num_sanity_val_steps: int = Field(default=2, ge=-1)
    """Validation batches run before training, to fail early."""
    deterministic: bool = True
    """Deterministic algorithms: the same seed gives the same numbers."""
    compile: bool = False
    """torch.compile the model."""
    enable_progress_bar: bool = True
    """Show progress: a bar on a terminal; where the output is not a terminal (a file, nohup,
    a SLURM log, CI), a plain line every progress_interval_s seconds."""
    progress_interval_s: float = Field(default=30.0, gt=0)
    """Seconds between plain progress lines (step, epoch, loss, tokens/s, elapsed, ETA) when
    the output is not a terminal; evaluate prints its answers' progress so too."""
    gradient_compression: Literal["none", "powersgd", "topk"] = "none"
    """Compress the gradients DDP ranks exchange: none; powersgd (PyTorch's PowerSGD hook,
    low-rank factors of powersgd_rank); topk (each parameter's largest topk_ratio of entries,
    with error feedback). Needs trainer.strategy=ddp and more than one device."""
    topk_ratio: float = Field(default=0.01, gt=0.0, lt=1.0)
    """topk: the share of each parameter's gradient entries a rank sends per step."""
    powersgd_rank: int = Field(default=4, ge=1)
    """powersgd: the rank of the low-rank approximation (higher: closer to the gradient)."""
    powersgd_start_step: int = Field(default=10, ge=2)
    """powersgd: uncompressed all-reduce before this step (PyTorch suggests ~10% of steps)."""
    checkpoint: CheckpointConfig = CheckpointConfig()

    def check(self) -> None:
        if self.max_epochs is None and self.max_steps == -1:
            raise fail(
                "trainer.max_steps",
                self.max_steps,
                "a positive step count when trainer.max_epochs is null (training would never end)",
            )
        if self.max_steps == 0:
            raise fail("trainer.max_steps", 0, "-1 (no limit) or a positive step count")
        interval = self.val_check_interval
        if isinstance(interval, float) and not 0.0 < interval <= 1.0:
            raise fail(
                "trainer.val_check_interval",
                interval,
                "a fraction of an epoch in (0, 1] or a whole number of batches",
            )
        if isinstance(interval, int) and interval < 1:
            raise fail("trainer.val_check_interval", interval, "at least 1 batch")
        if self.accelerator == "cpu" and self.precision == "16-mixed":
            raise fail(
                "trainer.precision",
                self.precision,
                "32-true or bf16-mixed on the CPU (16-mixed needs a GPU)",
            )
        if isinstance(self.devices, int) and self.devices < 1:
            raise fail("trainer.devices", self.devices, "a positive device count or 'auto'")
        self._check_compression()

    def _check_compression(self) -> None:
        method = self.gradient_compression
        if method == "none":
            return
        if self.strategy != "ddp":
            raise fail(
                "trainer.gradient_compression",
                method,
                f"none with trainer.strategy={self.strategy}: compression is a DDP communication "
                "hook, so use trainer=ddp (trainer.strategy=ddp)",
            )
        if self.devices == 1 and self.num_nodes == 1:
            raise fail(
                "trainer.gradient_compression",
                method,
                "none on a single device, which exchanges no gradients; compress with "
                "trainer.devices=2 or more",
            )
