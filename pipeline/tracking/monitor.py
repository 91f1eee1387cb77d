"""MLflow's system metrics (CPU, memory, disk, network, and GPU where there is one) sampled
in a background thread while a run trains, shown in the run's System metrics tab."""

from __future__ import annotations

import logging

from pipeline.config.logger import LoggerConfig
from pipeline.tracking.client import TrackedRun


def system_monitor(run: TrackedRun, logger: LoggerConfig):
    """A started SystemMetricsMonitor for `run` (None when logger.system_metrics is off);
    stop it with .finish()."""
    if not logger.system_metrics:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # Its start and stop INFO lines would interleave with the progress output.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(
        run.run_id,
        sampling_interval=logger.system_metrics_interval_s,
        # A resumed run's samples continue after the ones it already has.
        resume_logging=True,
        tracking_uri=run.tracking_uri,
    )
    monitor.start()
    return monitor
