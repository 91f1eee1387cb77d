"""make bench: run the benchmark modules, write outputs/bench/<date>/results.{json,md}, and log
the figures to the MLflow experiment `benchmarks`.

    python -m benchmarks.run [--quick | --smoke] [--only throughput lora ...] [--outputs DIR]

A benchmark is a module in this folder with a TITLE and `run(ctx: Context) -> list[Figure]`;
add its name to BENCHMARKS to include it. MODES, when a module has it, names the modes it runs
in (a real LLM's minutes are not for the smoke test).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import re
import shutil
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCHMARKS = [
    "throughput",
    "startup",
    "lora",
    "checkpoint",
    "tracking",
    "sparsity",
    "gguf",
    "packing",
    "data",
    "attention",
    "instruct",
    "compression",
    "llm_pruning",
    "gpu",
]
EXPERIMENT = "benchmarks"


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        names = [
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line
        ]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"# Benchmarks, {results['date']} ({results['mode']} mode)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, "
        f"torch {m['torch']}, GPU: {m['gpu'] or 'none'}. Load average (1 min) at the start "
        f"{results['load'][0]:.1f}, at the end {results['load'][1]:.1f}. Each figure: median of n "
        "repeats (min, max), repeats interleaved with the cases they are compared with.",
    ]
    for name, bench in results["benchmarks"].items():
        lines += ["", f"## {bench['title']} (`{name}`, {bench['seconds']:.0f} s)", ""]
        if bench.get("skipped"):
            lines.append(f"Skipped: {bench['skipped']}")
            continue
        lines += [
            "| figure | median | min | max | unit | n | target |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for f in bench["figures"]:
            target = ""
            if "target" in f:
                bound = "<=" if f.get("at_most") else ">="
                met = "(met)" if f["meets_target"] else "(missed)"
                target = f"{bound} {f['target']:g} {met}"
            lines.append(
                f"| {f['name']} | {_fmt(f['median'])} | {_fmt(f['min'])} | {_fmt(f['max'])} "
                f"| {f['unit']} | {f['n']} | {target} |"
            )
        notes = [f"- {f['name']}: {f['note']}" for f in bench["figures"] if f.get("note")]
        lines += ["", *notes] if notes else []
    return "\n".join(lines) + "\n"


def metric_key(name: str) -> str:
    """The figure's name as an MLflow metric name (letters, digits and _-. / only)."""
    return re.sub(r"[^\w\-. /]", "_", name)


def _fmt(x: float) -> str:
    return f"{x:,.3f}" if abs(x) < 10 else f"{x:,.1f}" if abs(x) < 1000 else f"{x:,.0f}"


def log_to_mlflow(results: dict[str, Any], outputs: Path, files: list[Path]) -> str:
    """One run in the experiment `benchmarks`: every figure's median as a metric (min and max
    beside it), the machine and mode as params, the result files as artifacts."""
    from mlflow.entities import Metric, Param

    from pipeline.tracking.client import open_experiment
    from pipeline.tracking.uri import default_tracking_uri

    client, experiment_id = open_experiment(default_tracking_uri(outputs), EXPERIMENT, outputs)
    run = client.create_run(experiment_id, run_name=f"{results['date']} {results['mode']}")
    now = int(time.time() * 1000)
    metrics = []
    for bench in results["benchmarks"].values():
        for f in bench.get("figures", []):
            key = f["metric"]
            metrics += [Metric(key, f["median"], now, 0)]
            metrics += [
                Metric(f"{key}/min", f["min"], now, 0),
                Metric(f"{key}/max", f["max"], now, 0),
            ]
    params = [Param("mode", results["mode"])] + [
        Param(f"machine.{k}", str(v)) for k, v in results["machine"].items()
    ]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    for path in files:
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from pipeline.config.paths import PROJECT_ROOT
    from pipeline.files import write_json, write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, under 2 minutes")
    size.add_argument("--smoke", action="store_true", help="the smallest sizes (for the test)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    parser.add_argument("--outputs", type=Path, default=PROJECT_ROOT / "outputs")
    args = parser.parse_args(argv)
    # Lightning's hints would bury the figures (its import sets the level, so import it first).
    import pytorch_lightning  # noqa: F401

    from benchmarks.common import Context

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    started = datetime.now(timezone.utc)
    load_at_start = os.getloadavg()[0]
    results: dict[str, Any] = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "mode": mode,
        "machine": machine(),
        "benchmarks": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        for name in args.only or BENCHMARKS:
            module = importlib.import_module(f"benchmarks.{name}")
            ctx = Context(mode, workdir / name)
            ctx.workdir.mkdir()
            print(f"== {name}: {module.TITLE}", flush=True)
            start = time.perf_counter()
            entry: dict[str, Any] = {"title": module.TITLE}
            skipped = getattr(module, "skip_reason", lambda: None)()
            if mode not in getattr(module, "MODES", (mode,)):
                skipped = f"not run in {mode} mode (only {', '.join(module.MODES)})"
            if skipped:
                entry["skipped"] = skipped
            else:
                entry["figures"] = [
                    {**f.to_dict(), "metric": metric_key(f.name)} for f in module.run(ctx)
                ]
            entry["seconds"] = time.perf_counter() - start
            results["benchmarks"][name] = entry
            for f in entry.get("figures", []):
                print(
                    f"   {f['name']}: {_fmt(f['median'])} {f['unit']} ({_fmt(f['min'])}..{_fmt(f['max'])})",
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["seconds"] = (datetime.now(timezone.utc) - started).total_seconds()
    # Other programs' load: figures of a busy machine are slower, their ratios hold better.
    results["load"] = [load_at_start, os.getloadavg()[0]]
    folder = args.outputs / "bench" / started.strftime("%Y-%m-%d")
    files = [
        write_json(folder / "results.json", results),
        write_text(folder / "results.md", markdown(results)),
    ]
    results["mlflow_run_id"] = log_to_mlflow(results, args.outputs, files)
    print(
        f"\nWrote {files[0]} and {files[1].name} in {results['seconds']:.0f} s; MLflow run "
        f"{results['mlflow_run_id']} in experiment '{EXPERIMENT}'."
    )
    return results


if __name__ == "__main__":
    main()
