"""Start-up: what each command costs before and around its work, as a ratio to `import torch`
measured in the same rounds (machines differ; the ratios travel).

- `import torch`, `import pytorch_lightning`, `import mlflow`: the floor and the two heavy
  libraries, each in a fresh interpreter;
- a config error (`optim.lr=-1`): target at most 0.4x torch's import (it imports no torch);
- `generate`, `export` to hf, `evaluate` (recorded in MLflow) and `doctor` on a trained
  `gpt-mini` run: targets at most 1.6x (generate) and 1.8x (export);
- the command to the first optimizer step of the default experiment;
- full mode: the default `make train` whole, and the seconds it spends beyond its training and
  validation loops (start-up, test, export, model logging): target at most 12 s. As the first
  run of a fresh clone (the MLflow store created, the demo data written) and as a later run.

Every repeat is a fresh process; training repeats get a fresh outputs folder, as on a fresh
clone (the demo data and the tokenizer are made again each time). The loops are timed from
inside the process: a wrapper runs `pipeline.train` and stamps the wall clock at Lightning's
`on_fit_start` and `on_fit_end` (the sanity check, every epoch and every validation between).
"""

from __future__ import annotations

import json
import os
import resource
import runpy
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import Context, Figure, interleave, pipeline_config, ratios

TITLE = "Start-up"
STAMPS_ENV = "BENCH_STAMPS"
EXIT_ENV = "BENCH_EXIT"
# The smoke test's runs are the test suite's tiny ones instead of the default experiment.
TINY = ["model=gpt-tiny", "data.synthetic_examples=400", "data.tokenizer.vocab_size=600"]
SIZES = {
    # (rounds, overrides of the training commands, measure the whole default run)
    "smoke": (1, TINY, False),
    "quick": (3, [], False),
    "full": (3, [], True),
}
# The smoke test checks the machinery on a few cases; the others cost a process each.
SMOKE_CASES = ("import torch", "config error", "generate")
TORCH_RATIO_TARGETS = {"config error": 0.4, "generate": 1.6, "export hf": 1.8}
OVERHEAD_TARGET_S = 12.0


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _timed(args: list[str], expect: int = 0, **env: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, env=_env(**env), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != expect:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return elapsed


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _command(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"pipeline.{name}", *args]


def run(ctx: Context) -> list[Figure]:
    rounds, overrides, whole_run = ctx.pick(SIZES)
    counter = iter(range(1_000_000))

    def folder() -> Path:
        return ctx.workdir / f"outputs-{next(counter)}"

    def fresh() -> str:
        return f"paths.outputs={folder()}"

    # One trained run for the commands that read one: a short one (their cost is start-up),
    # trained in this process, which has imported Lightning already.
    from pipeline.run.launch import Launch
    from pipeline.run.run import train

    outputs = ctx.workdir / "trained"
    short = ["trainer.max_epochs=1", "trainer.max_steps=20", "logger=none"]
    run_dir = outputs / "run"
    run_dir.mkdir(parents=True)
    train(
        pipeline_config([*overrides, *short, "trainer.enable_progress_bar=false"], outputs),
        Launch(run_dir),
    )
    stored = f"paths.outputs={outputs}"

    def first_step() -> float:
        """Seconds from the command to the end of its first training step (then it exits)."""
        stamps = ctx.workdir / "stamps.json"
        stamps.unlink(missing_ok=True)
        start = time.time()
        _timed(
            [sys.executable, "-m", "benchmarks.startup", fresh(), *overrides],
            **{STAMPS_ENV: str(stamps), EXIT_ENV: "1"},
        )
        return json.loads(stamps.read_text())["first_step"] - start

    cases = {
        "import torch": lambda: _timed(_python("import torch")),
        "import pytorch_lightning": lambda: _timed(_python("import pytorch_lightning")),
        "import mlflow": lambda: _timed(_python("import mlflow")),
        "config error": lambda: _timed(_command("train", fresh(), "optim.lr=-1"), expect=2),
        "generate": lambda: _timed(_command("generate", f"ckpt={run_dir}", "prompt=Are you free")),
        "export hf": lambda: _timed(
            _command("export", f"ckpt={run_dir}", "export.formats=[hf]", f"export.dir={folder()}")
        ),
        "evaluate": lambda: _timed(_command("evaluate", f"ckpt={run_dir}", stored)),
        "doctor": lambda: _timed(_command("doctor")),
        "first step": first_step,
    }
    if ctx.mode == "smoke":
        cases = {name: cases[name] for name in SMOKE_CASES}
    s = interleave(cases, rounds)
    torch_s = s["import torch"]
    what = "the default experiment" if not overrides else "a tiny run (" + " ".join(overrides) + ")"
    imports = ("import torch", "import pytorch_lightning", "import mlflow")
    figures = [Figure(name, "s", s[name]) for name in imports if name in s]
    for name, label in [
        ("config error", "a config error (optim.lr=-1)"),
        ("generate", "generate on a trained run (prints its answer)"),
        ("export hf", "export to hf"),
        ("evaluate", "evaluate on the test split, recorded in MLflow"),
        ("doctor", "doctor"),
    ]:
        if name not in s:
            continue
        figures.append(Figure(label, "s", s[name]))
        target = TORCH_RATIO_TARGETS.get(name)
        figures.append(
            Figure(f"{label} / import torch", "x", ratios(s[name], torch_s), target, at_most=True)
        )
    if "first step" in s:
        figures.append(Figure(f"command to first optimizer step, {what}", "s", s["first step"]))
    if whole_run:
        figures += _whole_runs(ctx, fresh, rounds)
    return figures


def _whole_runs(ctx: Context, fresh, rounds: int) -> list[Figure]:
    """The default `make train` end to end, and what it spends outside fit's loops: as the
    first run of a fresh clone (a new outputs folder: the MLflow store created, the demo data
    written), and as a later one (the same folder again)."""
    later = f"paths.outputs={ctx.workdir / 'outputs-later'}"
    found: dict[str, tuple[list[float], list[float]]] = {"first": ([], []), "later": ([], [])}

    def whole(outputs: str) -> tuple[float, float]:
        stamps = ctx.workdir / "stamps.json"
        stamps.unlink(missing_ok=True)
        start = time.time()
        _timed([sys.executable, "-m", "benchmarks.startup", outputs], **{STAMPS_ENV: str(stamps)})
        stamp = json.loads(stamps.read_text())
        return time.time() - start, stamp["fit_end"] - stamp["fit_start"]

    whole(later)  # the later runs' folder, made once
    for _ in range(rounds):
        for kind, outputs in (("first", fresh()), ("later", later)):
            wall, loops = whole(outputs)
            found[kind][0].append(wall)
            found[kind][1].append(loops)
    figures = []
    for kind, label in (("first", "the first"), ("later", "a later")):
        walls, loops = found[kind]
        beyond = [w - loop for w, loop in zip(walls, loops, strict=True)]
        figures += [
            Figure(f"wall time of {label} default make train", "s", walls),
            Figure(f"  {kind} run: training and validation loops", "s", loops),
            Figure(
                f"  {kind} run: beyond the loops (start-up, test, export, model logging)",
                "s",
                beyond,
                OVERHEAD_TARGET_S,
                at_most=True,
            ),
        ]
    return figures


def _stamped_train() -> None:
    """Run pipeline.train with the given overrides, writing to $BENCH_STAMPS the wall clock at
    fit's start and end and at the end of the first training step; with $BENCH_EXIT set, leave
    at the first step."""
    from pipeline.run.module import GPTLightningModule

    path = Path(os.environ[STAMPS_ENV])
    stamps: dict[str, float] = {}

    def stamp(name: str) -> None:
        stamps.setdefault(name, time.time())
        # The process's peak resident memory so far (Linux reports KiB).
        stamps["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        path.write_text(json.dumps(stamps))

    batch_end = GPTLightningModule.on_train_batch_end

    def on_train_batch_end(self, *args: object, **kwargs: object) -> None:
        stamp("first_step")
        if os.environ.get(EXIT_ENV):
            os._exit(0)
        batch_end(self, *args, **kwargs)

    GPTLightningModule.on_train_batch_end = on_train_batch_end  # type: ignore[method-assign]
    GPTLightningModule.on_fit_start = lambda self: stamp("fit_start")  # type: ignore[method-assign]
    GPTLightningModule.on_fit_end = lambda self: stamp("fit_end")  # type: ignore[method-assign]
    sys.argv = ["pipeline.train", *sys.argv[1:]]
    runpy.run_module("pipeline.train", run_name="__main__")


if __name__ == "__main__":
    _stamped_train()
