"""What the tests share: composing configs as the commands do, running the commands
themselves, interrupting a run at a step, and small pretrained models to start from."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from hydra import compose, initialize_config_dir

import pipeline.cli.app  # noqa: F401  (registers the ${project_root:} resolver)
from pipeline.config.paths import CONF_DIR, PROJECT_ROOT
from pipeline.config.train import TrainConfig
from pipeline.config.validate import validate
from pipeline.data.tokenizer import TextTokenizer

# Small enough that an end-to-end run takes seconds on two CPU cores.
TINY = [
    "model=gpt-tiny",
    "data.synthetic_examples=400",
    "data.tokenizer.vocab_size=600",
    "optim.batch_size=16",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=2",
    # Logging the model to MLflow costs a few seconds a run; the tests of it turn it back on.
    "logger.log_models=none",
]


def compose_config(overrides: list[str], config_name: str = "config", with_hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides, return_hydra_config=with_hydra)


def app_config(overrides: list[str], outputs: Path) -> TrainConfig:
    return validate(compose_config([f"paths.outputs={outputs}", *overrides]))


def train_in_process(overrides: list[str], tmp_path: Path) -> dict:
    """One run (TINY settings, no tracking) in tmp_path/run, without the CLI's start-up cost;
    returns what run.json records."""
    cfg = app_config([*TINY, "logger=none", *overrides], tmp_path / "outputs")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return train_config(cfg, run_dir)


def train_config(cfg: TrainConfig, run_dir: Path, overrides: tuple[str, ...] = ()) -> dict:
    """pipeline.run.run.train in `run_dir`, tracked where the command would track it;
    returns what run.json records. `overrides`: the command line's, as a resume weighs them."""
    from pipeline.run.launch import Launch
    from pipeline.run.run import train
    from pipeline.tracking.uri import resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.logger.tracking_uri, None, cfg.paths.outputs)
    return train(cfg, Launch(run_dir, tracking_uri=uri, overrides=overrides)).to_dict()


def train_here(outputs: Path, *overrides: str) -> dict:
    """`python -m pipeline.train paths.outputs=<outputs> <overrides>` in this process (a few
    seconds of start-up less than a command line), in a run folder where the command would
    make one; a resume continues the folder of the run it resumes. Returns run.json's record."""
    import datetime

    seed_store([*overrides, f"paths.outputs={outputs}"])
    cfg = app_config(list(overrides), outputs)
    now = datetime.datetime.now()
    run_dir = (
        outputs / "runs" / cfg.logger.experiment_name / f"{now:%Y-%m-%d}" / f"{now:%H-%M-%S-%f}"
    )
    run_dir.mkdir(parents=True)
    record = train_config(cfg, run_dir, tuple(overrides))
    if not any(run_dir.iterdir()):
        run_dir.rmdir()  # a resume wrote into the folder it continued
    return record


# A new MLflow SQLite store costs MLflow 2 to 3 s of schema migrations, in every one of the
# suite's few dozen command-line runs. They start from a copy of one store MLflow migrated
# (conftest.store_template fills this in); the in-process tracking tests and the benchmarks
# still create theirs.
STORE: dict[str, Path] = {}  # "template", and "root": the suite's temporary folder


def seed_store(args: tuple[str, ...] | list[str]) -> None:
    """Put the template store where a command line's run will track, unless it tracks
    elsewhere or nowhere, or a store is already there. Only inside the suite's temporary
    folder, where tests keep their outputs."""
    if not STORE or any(a.startswith(("logger=", "logger.tracking_uri=")) for a in args):
        return
    outputs = [Path(a.split("=", 1)[1]) for a in args if a.startswith("paths.outputs=")]
    if not outputs or STORE["root"] not in outputs[-1].parents:
        return
    store = outputs[-1] / "mlflow.db"
    try:
        if not store.exists():
            store.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(STORE["template"], store)
    except OSError:
        pass  # a test of an unwritable outputs folder


def cli_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def in_shell(command: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """A command line pasted into bash in the project folder, this virtual environment's
    `python` first on the PATH (as when it is activated)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        ["bash", "-c", command],
        cwd=PROJECT_ROOT,
        env={**cli_env(), "PATH": path},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli(
    module: str, *args: str, timeout: int = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    seed_store(args)
    return subprocess.run(
        [sys.executable, "-m", f"pipeline.{module}", *args],
        cwd=PROJECT_ROOT,
        env={**cli_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Runs a command as `python -m` does, then writes the names of the modules it imported.
_RECORDING = """
import atexit, json, runpy, sys
out, module, *args = sys.argv[1:]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = [module, *args]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
# What the commands that do not train must not import: Lightning (and torchmetrics) belong to
# training; torch._dynamo to compiling and to exporting through torch.export (ONNX).
LIGHTNING = ("pytorch_lightning", "lightning_fabric", "torchmetrics")


def run_recorded(
    module: str, *args: str, timeout: int = 300
) -> tuple[subprocess.CompletedProcess, set[str]]:
    """run_cli, and the modules the command had imported when it exited."""
    seed_store(args)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "modules.json"
        done = subprocess.run(
            [sys.executable, "-c", _RECORDING, str(out), f"pipeline.{module}", *args],
            cwd=PROJECT_ROOT,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return done, set(json.loads(out.read_text())) if out.is_file() else set()


def heavy(modules: set[str], *packages: str) -> set[str]:
    """The modules of `packages` that were imported, and torch._dynamo if it was."""
    return {m for m in modules if m.split(".")[0] in packages or m == "torch._dynamo"}


def train_until(
    outputs: Path,
    pattern: str,
    *args: str,
    count: int = 1,
    timeout: float = 180,
    stderr: IO[str] | int = subprocess.DEVNULL,
) -> subprocess.Popen:
    """Start `pipeline.train` and return once `count` files matching `pattern` exist under
    outputs, with the process still running (so that the caller can interrupt it). The process
    leads its own process group, as a command started from a terminal does; its stderr goes to
    the file `stderr`, if given (a pipe nobody reads while it trains would fill and block it)."""
    seed_store([*args, f"paths.outputs={outputs}"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.train", *args, f"paths.outputs={outputs}"],  # -m first
        cwd=PROJECT_ROOT,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while len(list(outputs.glob(pattern))) < count:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"training ended or timed out before {pattern} appeared")
        time.sleep(0.05)
    time.sleep(0.2)  # let the file's rename settle
    if proc.poll() is not None:
        raise AssertionError("training ended before it could be interrupted")
    return proc


def step_of(checkpoint: Path) -> int:
    import torch

    for _ in range(50):  # the file can be replaced while we read it
        try:
            return torch.load(checkpoint, weights_only=True, mmap=True)["global_step"]
        except (OSError, RuntimeError, EOFError):
            time.sleep(0.02)
    raise AssertionError(f"could not read {checkpoint}")


def kill_at_step(outputs: Path, step: int, sig: int, *args: str) -> subprocess.Popen:
    """Start training and send `sig` once its last.ckpt has reached `step`."""
    proc = train_until(outputs, "runs/*/*/*/checkpoints/last.ckpt", *args)
    (checkpoint,) = outputs.glob("runs/*/*/*/checkpoints/last.ckpt")
    deadline = time.monotonic() + 120
    while step_of(checkpoint) < step:
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before the step"
        time.sleep(0.01)
    proc.send_signal(sig)
    return proc


def randomize(model: Any) -> Any:
    """Large random weights everywhere (LayerNorms included), so layout mistakes show."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    return model.eval()


def llama_config(vocab_size: int, **overrides: Any):
    """A small Llama's config: 2 layers, 4 heads sharing 2 key/value heads (grouped-query)."""
    import transformers

    shape = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaConfig(vocab_size=vocab_size, **{**shape, **overrides})


def tiny_llama(directory: Path, tokenizer: TextTokenizer) -> None:
    """A small random Llama (grouped-query attention) saved as a Hugging Face directory."""
    import transformers

    config = llama_config(
        tokenizer.vocab_size,
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_id,
        bos_token_id=tokenizer.eos_id,
    )
    randomize(transformers.LlamaForCausalLM(config)).save_pretrained(directory)
    tokenizer.save(directory)


# llama.cpp's tools, built by `make llama-cpp` (and by make test, where missing) into a cache
# outside the clone (LLAMA_CPP_BIN overrides where they are looked for).
LLAMA_CPP_BIN = Path(
    os.environ.get("LLAMA_CPP_BIN")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "gpt-finetune-pipeline"
    / "llama.cpp-0.3.36-portable"
    / "bin"
)


def llama_cpp(tool: str) -> Path:
    """A llama.cpp tool. Where it is absent the test fails, saying how to build it: a skip
    would hide that llama.cpp never read our files."""
    import pytest

    path = LLAMA_CPP_BIN / tool
    if not path.is_file():
        pytest.fail(
            f"llama.cpp's {tool} is not built: run `make llama-cpp` (about 5 minutes, once; "
            f"cached in {LLAMA_CPP_BIN.parent}), which make test does first."
        )
    return path


def llama_run(tool: str, *args: str) -> str:
    """A llama.cpp tool's standard output (its log on stderr is dropped); bytes that are not
    UTF-8 (a model may emit part of a character) become U+FFFD, as our tokenizer decodes them."""
    done = subprocess.run([str(llama_cpp(tool)), *args], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.decode("utf-8", errors="replace")


def wait_until_up(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    """Until `url` answers, as long as the server process `server` that should serve it runs."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            assert server.poll() is None, f"the server for {url} exited ({server.returncode})"
            assert time.monotonic() < deadline, f"{url} did not answer in {timeout:.0f} s"
            time.sleep(0.5)
