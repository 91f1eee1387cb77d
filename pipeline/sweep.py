"""Sweeps (Hydra multirun): one MLflow parent run over the trials, and a summary at the end.

A Hydra callback, registered in conf/config.yaml. The parent run's id reaches the trials through
an environment variable, so it works for in-process and subprocess launchers alike; the summary
is read back from each trial's run.json, not from in-process state, for the same reason.
MLflow and matplotlib are imported only when a multirun starts or ends.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from pydantic import ValidationError

from pipeline import sweep_stop
from pipeline.errors import UserError
from pipeline.files import atomic_write, write_text

PARENT_ENV = "PIPELINE_SWEEP_PARENT_RUN_ID"


# A sweep folder's parent run, so that a search resumed into the same folder continues it.
PARENT_FILE = "mlflow_parent_run_id"


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from pipeline.config import TrainerConfig, to_container
        from pipeline.distributed import check_multirun
        from pipeline.search import check_search, is_search

        # Refused before any parent run is created or any trial starts.
        try:
            trainer = TrainerConfig.model_validate(to_container(config.trainer))
        except ValidationError:
            trainer = None  # each trial reports its own config error
        try:
            if trainer is not None:
                check_multirun(trainer, True, config.hydra.launcher.get("_target_", ""))
            if is_search(config.hydra.sweeper):
                check_search(config)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        # A search continued in its folder may find the last stop's file there.
        stop = sweep_stop.marker_in(config.hydra.sweep.dir)
        stop.unlink(missing_ok=True)
        sweep_stop.install(stop)
        if config.logger.name != "mlflow":
            return
        from pipeline.config import LoggerConfig
        from pipeline.tracking import reopen_run, start_parent_run

        root = Path(config.hydra.sweep.dir).resolve()
        sweep = {"sweep.overrides": " ".join(config.hydra.overrides.task), "sweep.dir": str(root)}
        if is_search(config.hydra.sweeper):
            sweep["sweep.search"] = OmegaConf.to_yaml(config.hydra.sweeper, resolve=True)
        logger = LoggerConfig.model_validate(OmegaConf.to_container(config.logger, resolve=True))
        known = root / PARENT_FILE
        if known.is_file():
            parent = reopen_run(logger, config.paths.outputs, known.read_text().strip()).run_id
        else:
            parent = start_parent_run(logger, config.paths.outputs, sweep)
            write_text(known, parent)
        os.environ[PARENT_ENV] = parent

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir)
        metric, mode, sampled = objective(config)
        rows = trial_rows(root, metric)
        best = best_trial(rows, mode)
        swept = swept_params(rows, sampled)
        table = markdown_table(rows, swept, metric, best)
        write_text(root / "sweep_summary.md", table)
        write_text(root / "sweep_summary.csv", csv_table(rows, swept, metric))
        plot = plot_trials(rows, swept, metric, root / "sweep_summary.png")
        print(table)
        signum = sweep_stop.stop_signal(sweep_stop.marker_in(root))
        stopped = f"Sweep stopped by {signal.Signals(signum).name}" if signum else None
        parent = os.environ.pop(PARENT_ENV, None)
        if parent:
            from pipeline.tracking import finish_parent_run

            if best is not None:
                best = {**best, "params": {k: best["params"].get(k, "") for k in swept}}
            files = [root / "sweep_summary.md", root / "sweep_summary.csv", plot]
            finish_parent_run(config, parent, best, metric, [f for f in files if f], stopped)
        if signum:
            print(
                f"{stopped}: the trials that were running saved a checkpoint and each continues "
                "with resume=<its folder>; the others did not start.",
                file=sys.stderr,
            )
            sys.exit(128 + signum)


def objective(config: DictConfig) -> tuple[str, str, list[str]]:
    """The metric trials are ranked by, its mode, and the parameters a search samples: the
    search's objective, else the checkpoint monitor (and no sampled parameters)."""
    from pipeline.search import is_search, load_search

    if is_search(config.hydra.sweeper):
        search = load_search(config.hydra.sweeper)
        return search.objective, search.mode, list(search.params)
    return config.trainer.checkpoint.monitor, config.trainer.checkpoint.mode, []


def trial_rows(root: Path, metric: str) -> list[dict[str, Any]]:
    """One row per trial folder (0, 1, ...): its overrides, status, metric and MLflow run."""
    rows = []
    for folder in sorted(
        (p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    ):
        overrides_file = folder / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.load(overrides_file) if overrides_file.is_file() else []
        record_file = folder / "run.json"
        record = json.loads(record_file.read_text()) if record_file.is_file() else {}
        rows.append(
            {
                "trial": int(folder.name),
                "params": dict(o.split("=", 1) for o in overrides if "=" in o),
                "status": record.get("status", "UNKNOWN"),
                "value": record.get("metrics", {}).get(metric),
                "metrics": record.get("metrics", {}),
                "run_id": record.get("run_id"),
                "run_dir": record.get("paths", {}).get("run_dir", str(folder)),
                "error": record.get("error", ""),
            }
        )
    return rows


def best_trial(rows: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    scored = [r for r in rows if r["status"] == "FINISHED" and r["value"] is not None]
    if not scored:
        return None
    pick = min if mode == "min" else max
    return pick(scored, key=lambda r: r["value"])


def swept_params(rows: list[dict[str, Any]], sampled: list[str]) -> list[str]:
    """The parameters a search samples, then any other whose value differs between trials
    (a grid's). Differing alone would drop a search's parameters when it has run one trial."""
    keys = sorted({k for r in rows for k in r["params"]} - set(sampled))
    return [*sampled, *(k for k in keys if len({r["params"].get(k) for r in rows}) > 1)]


def markdown_table(
    rows: list[dict[str, Any]], swept: list[str], metric: str, best: dict | None
) -> str:
    head = ["trial", *swept, "status", metric, "run folder"]
    lines = [
        f"# Sweep summary ({len(rows)} trials)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + " --- |" * len(head),
    ]
    for r in rows:
        value = "" if r["value"] is None else f"{r['value']:.6g}"
        status = r["status"] + (" (best)" if best is r else "")
        cells = [str(r["trial"]), *(r["params"].get(k, "") for k in swept), status, value]
        lines.append("| " + " | ".join([*cells, r["run_dir"]]) + " |")
    if best:
        params = " ".join(f"{k}={best['params'].get(k, '')}" for k in swept)
        lines += ["", f"Best: trial {best['trial']} ({params}), {metric} = {best['value']:.6g}."]
    failed = [r for r in rows if r["status"] != "FINISHED"]
    for r in failed:
        lines.append(f"- trial {r['trial']} {r['status']}: {r['error'][:300]}")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict[str, Any]], swept: list[str], metric: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["trial", *swept, "status", metric, "run_id", "run_dir", "error"])
    for r in rows:
        params = [r["params"].get(k, "") for k in swept]
        writer.writerow(
            [r["trial"], *params, r["status"], r["value"], r["run_id"], r["run_dir"], r["error"]]
        )
    return out.getvalue()


def plot_trials(
    rows: list[dict[str, Any]], swept: list[str], metric: str, path: Path
) -> Path | None:
    """The metric against each swept parameter, one panel each (log axis for positive numbers
    spanning more than a factor of 10, e.g. learning rates)."""
    scored = [r for r in rows if r["value"] is not None]
    if not swept or not scored:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(swept), figsize=(4 * len(swept), 3.2), squeeze=False)
    for ax, key in zip(axes[0], swept, strict=True):
        values = [r["params"].get(key) for r in scored]
        try:
            xs = [float(v) for v in values]
            if min(xs) > 0 and max(xs) / min(xs) > 10:
                ax.set_xscale("log")
        except (TypeError, ValueError):
            labels = sorted(set(values))
            xs = [labels.index(v) for v in values]
            ax.set_xticks(range(len(labels)), labels)
        ax.scatter(xs, [r["value"] for r in scored])
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path
