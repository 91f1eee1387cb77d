"""python -m pipeline.evaluate, once its settings are validated: the model over a split, each
example's output, metrics.json, and the evaluation's MLflow run (nested under the training run
when the store has it). A signal stops it with what was done written and recorded KILLED."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.assembly.restore import load_trained
from pipeline.config.commands import EvaluateConfig
from pipeline.data.records import load_splits
from pipeline.errors import Interrupted
from pipeline.evaluation.interrupt import StopOnSignal
from pipeline.evaluation.split import Evaluation, data_config, evaluate
from pipeline.files import write_json, write_text
from pipeline.record import Status


def evaluate_command(
    cfg: EvaluateConfig, overrides: list[str], folder: Path, tracking_uri: str | None
) -> dict[str, float]:
    """`overrides`: the command line's (they decide whether the recorded data settings hold);
    `folder`: where the outputs are written; `tracking_uri`: None to record nothing."""
    trained = load_trained(cfg.ckpt)
    data, seed = data_config(cfg, trained.config, overrides)
    evaluation = Evaluation({})
    partial = folder / "responses.jsonl.partial"
    with StopOnSignal() as stop:
        try:
            evaluation = evaluate(trained, data, seed, cfg.split, cfg, cfg.max_examples, stop)
            if data.task == "instruct":
                _with_answers(evaluation, trained, data, seed, cfg, partial, stop)
        except Interrupted as exc:
            kept = [partial] if partial.is_file() else []
            message = str(exc)
            if kept:
                done = sum(1 for _ in partial.open(encoding="utf-8"))
                message += f" The {done} answers generated so far are in {partial}."
            if tracking_uri:
                _record(cfg, tracking_uri, evaluation, kept, Status.KILLED)
                message += " The evaluation's MLflow run is KILLED with them."
            raise Interrupted(
                f"{message} Run the command again for the whole split, or pass "
                "max_examples=N to evaluate fewer examples.",
                exc.signum,
            ) from None
    files = []
    if evaluation.rows:
        if data.task == "instruct":
            files.append(folder / "responses.jsonl")
        else:
            lines = "".join(json.dumps(row) + "\n" for row in evaluation.rows)
            files.append(write_text(folder / "predictions.jsonl", lines))
        print(f"each example's output written to {files[-1]}")
    for key, value in evaluation.metrics.items():
        print(f"{key:>16}: {value:.4f}")
    summary = {"ckpt": str(Path(cfg.ckpt).resolve()), "data": data.path}
    if cfg.max_examples is not None:
        summary["max_examples"] = cfg.max_examples
    files.append(write_json(folder / "metrics.json", summary | {"metrics": evaluation.metrics}))
    print(f"written to {files[-1]}")
    if tracking_uri:
        tracked = _record(cfg, tracking_uri, evaluation, files, Status.FINISHED)
        print(f"recorded in MLflow: {tracked.ui_url()}")
    return evaluation.metrics


def _with_answers(evaluation, trained, data, seed, cfg, out: Path, stop: StopOnSignal) -> None:
    """An instruct model's answer to every example of the split, scored (and judged)."""
    from pipeline.evaluation.answers import answer_all, scores

    conversations = load_splits(data, seed)[cfg.split].conversations[: cfg.max_examples]
    every = cfg.trainer.progress_interval_s if cfg.trainer.enable_progress_bar else None
    rows = answer_all(trained, conversations, cfg.max_new_tokens, out, stop, every)
    found = scores(rows)
    if cfg.judge.url:
        from pipeline.evaluation.judge import judge_all

        found |= judge_all(rows, cfg.judge.url, cfg.judge.model, cfg.judge.timeout_s)
    evaluation.metrics |= {f"{cfg.split}/{k}": v for k, v in found.items()}
    evaluation.rows = rows


def _record(cfg: EvaluateConfig, uri: str, evaluation: Evaluation, files: list[Path], status):
    from pipeline.tracking.evaluation import record_evaluation

    where = (uri, cfg.logger.experiment_name, cfg.paths.outputs, cfg.ckpt, cfg.split)
    e = evaluation
    return record_evaluation(*where, e.source, e.metrics, e.rows, files, status)
