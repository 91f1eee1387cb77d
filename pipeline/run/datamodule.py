"""The DataModule of a training run: the train split shuffled per epoch (resumable mid-epoch,
split over data-parallel ranks), or streamed (data.streaming, pipeline/data/streaming.py);
val and test in order."""

from __future__ import annotations

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from pipeline.data.bundle import DataBundle
from pipeline.data.loader import EpochShuffle, split_loader
from pipeline.data.streaming import StreamingBundle, StreamPlan, stream_loader


class TextDataModule(pl.LightningDataModule):
    def __init__(
        self, bundle: DataBundle, batch_size: int, eval_batch_size: int, seed: int, workers: int
    ):
        super().__init__()
        self.bundle = bundle
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.seed, self.workers = seed, workers
        self._batches_done = 0
        self._positions: dict[int, tuple[int, int]] = {}

    def resume_stream(self, positions: dict[int, tuple[int, int]]) -> None:
        """data.streaming: where each shard of the stream continues (from the checkpoint)."""
        self._positions = positions

    def resume_mid_epoch(self, batches_done: int) -> None:
        """The next training epoch starts after the first `batches_done` batches of this
        rank's order (a checkpoint saved mid-epoch); a count of whole epochs skips nothing."""
        self._batches_done = batches_done

    def train_dataloader(self) -> DataLoader:
        world = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        if isinstance(self.bundle, StreamingBundle):
            return self._stream(*world)
        sampler = EpochShuffle(self.bundle.splits["train"].ids, self.seed, *world)
        n_batches = -(-sampler.num_samples // self.batch_size)
        sampler.skip = self._batches_done % n_batches * self.batch_size
        self._batches_done = 0
        return self._loader("train", self.batch_size, sampler)

    def _stream(self, world_size: int, rank: int) -> DataLoader:
        # The whole run is one epoch of max_steps * accumulate_grad_batches batches a rank
        # (pipeline/run/length.py requires max_steps), of which a resume yields the rest.
        trainer = self.trainer
        total = trainer.max_steps * trainer.accumulate_grad_batches
        plan = StreamPlan(rank, world_size, self.workers, total, self._batches_done)
        plan.positions, self._batches_done = self._positions, 0
        return stream_loader(self.bundle, plan, self.batch_size, self.seed)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def _loader(self, split: str, batch_size: int, sampler: EpochShuffle | None = None):
        return split_loader(self.bundle, split, batch_size, self.seed, self.workers, sampler)
