"""Evaluate a trained model on a data split:

    python -m pipeline.evaluate ckpt=<run folder|.ckpt|export dir> [split=test] [data=... data.path=...]

Without data overrides on the command line, the data settings recorded in the checkpoint are
used (same file, same seed, so the same split); the tokenizer and labels always come from it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.cli.app import hydra_command
from pipeline.config.commands import EvaluateConfig


@hydra_command("evaluate")
def main(cfg: EvaluateConfig) -> dict[str, float]:
    if cfg.judge.url:
        from pipeline.run.judge import check_judge

        check_judge(cfg.judge.url)  # before torch loads and minutes of generating
    from hydra.core.hydra_config import HydraConfig

    from pipeline.build.restore import load_trained
    from pipeline.cli.launch import tracking_uri
    from pipeline.files import write_json, write_text
    from pipeline.run.evaluation import data_config, evaluate, with_answers

    trained = load_trained(cfg.ckpt)
    hydra_cfg = HydraConfig.get()
    data, seed = data_config(cfg, trained.config, list(hydra_cfg.overrides.task))
    evaluation = evaluate(trained, data, seed, cfg.split, cfg)
    if data.task == "instruct":
        with_answers(evaluation, trained, data, seed, cfg)
    folder = Path(hydra_cfg.runtime.output_dir)
    files = []
    if evaluation.rows:
        name = "responses.jsonl" if data.task == "instruct" else "predictions.jsonl"
        lines = "".join(json.dumps(row) + "\n" for row in evaluation.rows)
        files.append(write_text(folder / name, lines))
        print(f"each example's output written to {files[-1]}")
    for key, value in evaluation.metrics.items():
        print(f"{key:>16}: {value:.4f}")
    summary = {"ckpt": str(Path(cfg.ckpt).resolve()), "data": data.path}
    files.append(write_json(folder / "metrics.json", summary | {"metrics": evaluation.metrics}))
    print(f"written to {files[-1]}")
    if cfg.logger.name == "mlflow":
        from pipeline.tracking.evaluation import record_evaluation

        uri = tracking_uri(cfg.logger, cfg.paths.outputs)
        where = (uri, cfg.logger.experiment_name, cfg.paths.outputs, cfg.ckpt, cfg.split)
        e = evaluation
        tracked = record_evaluation(*where, e.source, e.metrics, e.rows, files)
        print(f"recorded in MLflow: {tracked.ui_url()}")
    return evaluation.metrics


if __name__ == "__main__":
    main()
