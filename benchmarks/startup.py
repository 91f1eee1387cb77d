"""Start-up (issue figure 3): time to a config error, from the command to the first optimizer
step, and the total wall time of the default `make train`.

Every repeat is a fresh `python -m pipeline.train` process with a fresh outputs folder, as on a
fresh clone: the demo data and the tokenizer are made again each time. In full mode the process
that stamps the first step trains on to the end, and gives the whole run's wall time too.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import Context, Figure, interleave

TITLE = "Start-up"
STAMP_ENV = "BENCH_FIRST_STEP_STAMP"
EXIT_ENV = "BENCH_EXIT"
# The smoke test's start-up uses the test suite's tiny run instead of the default experiment.
TINY = ["model=gpt-tiny", "data.synthetic_examples=400", "data.tokenizer.vocab_size=600"]
SIZES = {
    # (rounds, overrides of the training command, measure the whole default run)
    "smoke": (1, TINY, False),
    "quick": (2, [], False),
    "full": (2, [], True),
}


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.train", *args]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run(ctx: Context) -> list[Figure]:
    rounds, overrides, whole_run = ctx.pick(SIZES)
    counter = iter(range(1_000_000))

    def fresh() -> str:
        return f"paths.outputs={ctx.workdir / f'outputs-{next(counter)}'}"

    def config_error() -> float:
        start = time.perf_counter()
        done = subprocess.run(
            _command(fresh(), "model.n_heads=3"), env=_env(), capture_output=True, text=True
        )
        elapsed = time.perf_counter() - start
        if done.returncode != 2:
            raise RuntimeError(f"expected a config error (exit 2), got:\n{done.stderr}")
        return elapsed

    def first_step() -> float:
        """Seconds from the command to the end of its first step; with whole_run the process
        then trains to the end, and its total wall time is kept too."""
        stamp = ctx.workdir / "first-step"
        stamp.unlink(missing_ok=True)
        start = time.time()
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.startup", fresh(), *overrides],
            env=_env(**{STAMP_ENV: str(stamp), EXIT_ENV: "" if whole_run else "1"}),
            capture_output=True,
            text=True,
        )
        if not stamp.is_file() or (whole_run and done.returncode):
            raise RuntimeError(f"training failed:\n{done.stderr}")
        walls.append(time.time() - start)
        return float(stamp.read_text()) - start

    walls: list[float] = []
    s = interleave({"config error": config_error, "first step": first_step}, rounds)
    what = "the default experiment" if not overrides else "a tiny run (" + " ".join(overrides) + ")"
    figures = [
        Figure("time to a config error (model.n_heads=3)", "s", s["config error"]),
        Figure(f"command to first optimizer step, {what}", "s", s["first step"]),
    ]
    if whole_run:
        figures.append(Figure("wall time of the default make train", "s", walls))
    return figures


def _stamp_first_step() -> None:
    """Run pipeline.train with the given overrides; at the end of the first training step,
    write the wall-clock time to $BENCH_FIRST_STEP_STAMP, and leave at once if $BENCH_EXIT is
    set."""
    from pipeline.run.module import GPTLightningModule

    batch_end = GPTLightningModule.on_train_batch_end
    stamp = Path(os.environ[STAMP_ENV])

    def stamped(self, *args: object, **kwargs: object) -> None:
        if not stamp.exists():
            stamp.write_text(repr(time.time()))
            if os.environ.get(EXIT_ENV):
                os._exit(0)
        batch_end(self, *args, **kwargs)

    GPTLightningModule.on_train_batch_end = stamped  # type: ignore[method-assign]
    sys.argv = ["pipeline.train", *sys.argv[1:]]
    runpy.run_module("pipeline.train", run_name="__main__")


if __name__ == "__main__":
    _stamp_first_step()
