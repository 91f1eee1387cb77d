"""Which device a command runs on, and the refusal of one this machine lacks."""

from __future__ import annotations

import torch

from pipeline.config.train import TrainConfig
from pipeline.errors import UserError


def check_devices(cfg: TrainConfig) -> None:
    """Refuse a GPU request on a machine without one before any data or run is created."""
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={cfg.trainer.accelerator} but this machine has no CUDA "
            "device. Use trainer=cpu (or trainer.accelerator=auto); python -m pipeline.doctor "
            "shows what this machine offers."
        )
    if cfg.sparsity.accelerate:
        from pipeline.sparsity.accelerate import check_semi_structured

        check_semi_structured()


def device_of(accelerator: str) -> torch.device:
    """The one device a single-process command uses for trainer.accelerator (Lightning's
    choice for `auto`: a GPU when there is one)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("mps" if accelerator == "mps" else "cpu")


def autocast(device: torch.device, precision: str):
    """trainer.precision as Lightning runs evaluation under it: an autocast region for the
    mixed precisions, nothing for 32-true."""
    import contextlib

    if precision == "32-true":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
