"""Data-parallel runs: a digest that shows replicas hold the same weights, and the one
combination that cannot work.

Every rank runs the whole command (Lightning's subprocess launcher re-runs it; torchrun and
srun start it once per rank), so the run folder, MLflow run, exports and run.json are rank 0's
job; the other ranks only train, and leave run.rank<N>.json to show they agree.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from pipeline.config.trainer import TrainerConfig
from pipeline.errors import UserError

if TYPE_CHECKING:
    import torch


def weights_digest(model: torch.nn.Module) -> str:
    """A hash of every parameter's bytes: replicas that trained in step have the same one."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_multirun(t: TrainerConfig, launcher: str, external_ranks: bool) -> None:
    """In a sweep (-m): Lightning's subprocess DDP re-runs the command line in each extra rank,
    which would start the whole sweep again in every rank. The submitit launcher (SLURM) starts
    the ranks itself, as torchrun and srun do (`external_ranks`)."""
    if "submitit" in launcher:
        return
    spawns = t.strategy.startswith("ddp") or t.strategy.startswith("fsdp")
    many = t.devices == "auto" or t.devices > 1 or t.num_nodes > 1
    if spawns and many and not external_ranks:
        raise UserError(
            f"trainer.strategy={t.strategy} with trainer.devices={t.devices} inside a sweep (-m): "
            "Lightning would start each extra rank by re-running this command, which re-launches "
            "the whole sweep in every rank. Give each trial one device (trainer.devices=1; "
            "hydra/launcher=local runs trials side by side), or run the sweep on SLURM with "
            "hydra/launcher=slurm and one task per device, where srun starts the ranks "
            "(see docs/scaling-out.md)."
        )
