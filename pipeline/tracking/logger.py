"""A Lightning logger that writes into an existing MLflow run, batching metrics into few
requests (Lightning's MLFlowLogger sends each step's metrics as they come, truncates params and
falls back to a file store unless told otherwise)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from pipeline.tracking.client import TrackedRun

METRICS_PER_BATCH = 1000


class BatchedMLflowLogger(Logger):
    """Lightning logger writing into an existing MLflow run, batching metrics into few requests."""

    def __init__(
        self,
        run: TrackedRun,
        flush_every: int = 500,
        flush_seconds: float = 10.0,
        skip_through: int = -1,
    ):
        super().__init__()
        self.run = run
        # A resumed run replays the steps after its last checkpoint; those were logged already.
        self.skip_through = skip_through
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.run.run_id

    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        return self.run.client

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        # The whole resolved config is logged once by start_run.
        pass

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        timestamp = int(time.time() * 1000)
        if (step or 0) <= self.skip_through:
            return
        for key, value in metrics.items():
            self._buffer.append(Metric(key, float(value), timestamp, step or 0))
        # Checkpoints flush too, before they appear (faults.AtomicCheckpointIO).
        if (
            len(self._buffer) >= self.flush_every
            or time.monotonic() - self._last_flush > self.flush_seconds
        ):
            self.flush()

    @rank_zero_only
    def flush(self) -> None:
        for i in range(0, len(self._buffer), METRICS_PER_BATCH):
            self.run.client.log_batch(
                self.run.run_id, metrics=self._buffer[i : i + METRICS_PER_BATCH]
            )
        self._buffer.clear()
        self._last_flush = time.monotonic()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.flush()

    def save(self) -> None:
        # Lightning calls save() after every log_metrics; flushing here would undo the batching.
        pass
