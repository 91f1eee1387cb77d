"""Evaluate a trained model on a data split:

    python -m pipeline.evaluate ckpt=<run folder|.ckpt|export dir> [split=test] [data=... data.path=...]

Without data overrides on the command line, the data settings recorded in the checkpoint are
used (same file, same seed, so the same split); the tokenizer and labels always come from it.
It runs the model in plain torch (no Lightning) and imports MLflow only to record the result.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.cli.app import hydra_command
from pipeline.config.commands import EvaluateConfig


@hydra_command("evaluate")
def main(cfg: EvaluateConfig) -> dict[str, float]:
    if cfg.judge.url:
        from pipeline.evaluation.judge import check_judge

        check_judge(cfg.judge.url)  # before torch loads and minutes of generating
    from hydra.core.hydra_config import HydraConfig

    from pipeline.cli.launch import tracking_uri
    from pipeline.evaluation.command import evaluate_command
    from pipeline.tracking.uri import check_store

    hydra_cfg = HydraConfig.get()
    uri = tracking_uri(cfg.logger, cfg.paths.outputs) if cfg.logger.name == "mlflow" else None
    if uri:
        check_store(uri)  # a server that is down is reported now, not after the evaluation
    folder = Path(hydra_cfg.runtime.output_dir)
    return evaluate_command(cfg, list(hydra_cfg.overrides.task), folder, uri)


if __name__ == "__main__":
    main()
