"""The summary of a sweep (Hydra multirun): one row per trial, read back from each trial's
run.json (so it works whatever launcher ran the trials), the best trial, and
sweep_summary.{md,csv,png}. Matplotlib is imported only to draw the plot."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config.search import is_search, load_search
from pipeline.files import atomic_write, write_text
from pipeline.record import RunRecord, Status


def summarize(config: DictConfig, root: Path) -> tuple[dict[str, Any] | None, str, list[Path]]:
    """Write sweep_summary.{md,csv,png} in the sweep folder and print the table; the best
    trial (its params those that were swept), the metric, and the files written."""
    metric, mode, sampled = objective(config)
    rows = trial_rows(root, metric)
    best = best_trial(rows, mode)
    swept = swept_params(rows, sampled)
    table = markdown_table(rows, swept, metric, best)
    files = [
        write_text(root / "sweep_summary.md", table),
        write_text(root / "sweep_summary.csv", csv_table(rows, swept, metric)),
    ]
    plot = plot_trials(rows, swept, metric, root / "sweep_summary.png")
    print(table)
    if best is not None:
        best = {**best, "params": {k: best["params"].get(k, "") for k in swept}}
    return best, metric, [*files, plot] if plot else files


def objective(config: DictConfig) -> tuple[str, str, list[str]]:
    """The metric trials are ranked by, its mode, and the parameters a search samples: the
    search's objective, else the checkpoint monitor (and no sampled parameters)."""
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
        record = RunRecord.read(folder)
        rows.append(
            {
                "trial": int(folder.name),
                "params": dict(o.split("=", 1) for o in overrides if "=" in o),
                "status": record.status.value if record else "UNKNOWN",
                "value": record.metrics.get(metric) if record else None,
                "metrics": record.metrics if record else {},
                "run_id": record.run_id if record else None,
                "run_dir": (record and record.paths.run_dir) or str(folder),
                "error": (record and record.error) or "",
            }
        )
    return rows


def best_trial(rows: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    scored = [r for r in rows if r["status"] == Status.FINISHED and r["value"] is not None]
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
    failed = [r for r in rows if r["status"] != Status.FINISHED]
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
