"""The models a finished run logs to MLflow (logger.log_models) and registers
(logger.register_as), after training: a failure here is reported and tagged on the run, which
still ends FINISHED, because the trained model is safe in the run folder either way."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from pipeline.config.train import TrainConfig
from pipeline.record import RunRecord
from pipeline.tracking.client import TrackedRun
from pipeline.tracking.models import log_model, register
from pipeline.tracking.runs import last_step


def log_run_models(
    cfg: TrainConfig, run: TrackedRun, record: RunRecord, in_sweep: bool = False
) -> dict[str, str]:
    """Log (and register) the run's models; the tags that say what failed, if anything. The
    trials of a sweep only log theirs: the sweep registers its best trial's at its end."""
    logger = cfg.logger
    if logger.log_models == "none":
        return {}
    exports = record.paths.exports
    hf_dir = exports.get("merged") or exports.get("hf")
    if hf_dir is None:
        print(
            "note: no MLflow model logged: export.formats has no hf export to log. Add hf to "
            "export.formats, or set logger.log_models=none to silence this.",
            file=sys.stderr,
        )
        return {}
    step = last_step(run)
    try:
        if logger.log_models == "checkpoints":
            _log_checkpoints(cfg, run, record, step)
        model_id = log_model(run, Path(hf_dir), cfg.data.task, step)
    except Exception as exc:
        return _failed("model.error", "log the model to MLflow", exc)
    record.model_uri = f"models:/{model_id}"
    if not logger.register_as or in_sweep:
        return {}
    try:
        version = register(run, model_id, logger.register_as, logger.alias)
    except Exception as exc:
        return _failed("registry.error", f"register the model as {logger.register_as!r}", exc)
    record.registered_model = f"models:/{logger.register_as}@{logger.alias}"
    print(f"Registered {logger.register_as} version {version} as {record.registered_model}.")
    return {}


def _log_checkpoints(cfg: TrainConfig, run: TrackedRun, record: RunRecord, final: int) -> None:
    """Every kept checkpoint before the final step as a model at its step (the final step's
    model is the run's exported one)."""
    from pipeline import checkpoint
    from pipeline.assembly.restore import load_trained
    from pipeline.formats import export_trained

    folder = Path(record.paths.run_dir or ".") / "checkpoints"
    fmt = "merged" if cfg.lora.enabled else "hf"
    for path in sorted(folder.glob("*.ckpt")):
        step = int(checkpoint.read(path).get("global_step", 0))
        if step >= final:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            written = export_trained(load_trained(path), [fmt], Path(tmp))
            log_model(run, written[fmt], cfg.data.task, step)


def _failed(tag: str, what: str, exc: Exception) -> dict[str, str]:
    message = f"{type(exc).__name__}: {exc}".strip()
    print(
        f"warning: could not {what} ({message.splitlines()[0][:300]}). The run is finished "
        f"and its exports are in its run folder; the failure is tagged {tag} on the MLflow run.",
        file=sys.stderr,
    )
    return {tag: message[:5000]}
