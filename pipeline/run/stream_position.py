"""data.streaming's position in the checkpoint: where each shard of the stream was after the
last batch trained, so that a resumed run reads on from there (pipeline/data/streaming.py).

Every rank trains on its own shards; at a save each rank gives its positions and rank 0's
checkpoint holds them all (Lightning builds the checkpoint on every rank, so the gather is a
collective every rank takes part in, as the compression callback's is).
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from pipeline.data.streaming import POSITION_KEY
from pipeline.errors import UserError

CHECKPOINT_KEY = "stream_position"


class StreamPosition(pl.Callback):
    """Keeps the latest trained batch's [shard, pass, consumed] per shard of this rank."""

    def __init__(self, workers: int):
        self.workers = max(workers, 1)
        self.positions: dict[int, tuple[int, int]] = {}

    def resume(self, positions: dict[int, tuple[int, int]]) -> None:
        self.positions = dict(positions)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        shard, epoch, consumed = batch[POSITION_KEY]
        self.positions[int(shard)] = (int(epoch), int(consumed))

    def on_save_checkpoint(self, trainer, pl_module, ckpt: dict) -> None:
        # One fixed-size row a local shard, -1 for a shard that has not trained yet.
        first = trainer.global_rank * self.workers
        rows = torch.full((self.workers, 3), -1, dtype=torch.long)
        for i in range(self.workers):
            if first + i in self.positions:
                rows[i] = torch.tensor([first + i, *self.positions[first + i]])
        if trainer.world_size > 1:
            rows = trainer.strategy.all_gather(rows.to(pl_module.device)).reshape(-1, 3).cpu()
        ckpt[CHECKPOINT_KEY] = {
            "shards": trainer.world_size * self.workers,
            "positions": [row for row in rows.tolist() if row[0] >= 0],
        }


def saved_positions(path: str | Path, shards: int) -> dict[int, tuple[int, int]]:
    """The shard positions a checkpoint of a streamed run saved; refused when this run would
    cut the stream into another number of shards (its order would not be the same)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    saved = state.get(CHECKPOINT_KEY)
    if saved is None:
        return {}
    if saved["shards"] != shards:
        raise UserError(
            f"The checkpoint {path} was saved by a streamed run (data.streaming) read in "
            f"{saved['shards']} shards (devices times data.num_workers), and this resume would "
            f"read {shards}: the stream's order would change, so the resume would not train on "
            "the same tokens. Resume with the run's trainer.devices."
        )
    return {shard: (epoch, consumed) for shard, epoch, consumed in saved["positions"]}
