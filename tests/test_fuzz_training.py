"""Property-based fuzzing of training runs (Hypothesis): gpt-tiny trained for 1-3 steps on
generated combinations of settings that interact (lengths against context and batches,
fractions that sum past 1, schedules against run length, LoRA and sparsity targets, devices and
precisions, export formats), and runs resumed with a changed command line. Each case trains or
is refused in one paragraph: never a traceback, a run left RUNNING, a KILLED run turned FAILED,
or a half-written file.

These train, so they run under `make fuzz` (new cases each time, FUZZ_EXAMPLES of them); the
suite runs a fixed sample of six combinations on one device."""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from pipeline.config.export import EXPORT_FORMATS
from tests.fuzzing import check_outcome, fuzz_only_settings, fuzz_settings
from tests.helpers import TINY, kill_at_step, run_cli

# Values at the edges where keys meet: a batch larger than the data, a length beyond the
# context, fractions summing past 1, warm-up and validation intervals longer than the run.
LOOP = {
    "optim.batch_size": st.sampled_from([1, 7, 64, 500]),
    "optim.accumulate_grad_batches": st.sampled_from([1, 3, 40]),
    "optim.warmup_steps": st.sampled_from([0, 2, 10_000]),
    "data.max_length": st.sampled_from([2, 16, 64, 128, 129]),
    "data.val_fraction": st.sampled_from([0.0, 0.1, 0.3, 0.6]),
    "data.test_fraction": st.sampled_from([0.0, 0.1, 0.4]),
    "trainer.max_steps": st.sampled_from([1, 3]),
    "trainer.val_check_interval": st.sampled_from([1, 5, 0.5, 1.0]),
    "data.task": st.sampled_from(["classification", "causal_lm"]),
    "data.packing": st.sampled_from([False, False, True]),
}
LORA = {
    "lora": st.sampled_from(["default", "all_linear", "dora"]),
    "lora.r": st.sampled_from([1, 4, 64, 4096]),
    "lora.target_modules": st.sampled_from(
        ["attention", "all-linear", "[W_query,W_value]", "[fc1]", "[out_head]", "[no_such]"]
    ),
}
SPARSITY = {
    "sparsity": st.sampled_from(["magnitude", "gradual", "nm_2_4", "structured", "l1", "rigl"]),
    "sparsity.pattern": st.sampled_from(["unstructured", "structured", "2:4", "1:8"]),
    "sparsity.target_modules": st.sampled_from(["all-linear", "attention", "[fc1]", "[no_such]"]),
    "sparsity.final": st.sampled_from([0.3, 0.99]),
    "sparsity.start_step": st.sampled_from([0, 1, 0.5, 1000]),
    "sparsity.end_step": st.sampled_from([1, 2, 0.7, 1.0, 1000]),
}
DEVICES = {
    "trainer.devices": st.sampled_from([1, 1, 2, 3]),
    "trainer.precision": st.sampled_from(["32-true", "bf16-mixed", "16-mixed"]),
    "trainer.accelerator": st.sampled_from(["auto", "cpu"]),
}
# Mostly formats any model exports; gguf (language models) and adapter/merged (LoRA) now and then.
FORMATS = [*["hf", "weights", "onnx"] * 3, *EXPORT_FORMATS]
EXPORT = {"export.formats": st.lists(st.sampled_from(FORMATS), max_size=2, unique=True)}


@st.composite
def combinations(draw: st.DrawFn, groups: tuple[dict, ...]) -> dict[str, object]:
    """LOOP's keys, and each of `groups` half the time, each of its keys half the time."""
    values = {key: draw(strategy) for key, strategy in LOOP.items()}
    for group in groups:
        if draw(st.booleans()):
            values |= {
                k: draw(s)
                for k, s in group.items()
                if k in {"lora", "sparsity"} or draw(st.booleans())
            }
    return values


def as_override(key: str, value: object) -> str:
    if isinstance(value, list):
        return f"{key}=[{','.join(map(str, value))}]"
    return f"{key}={value}"


def train(args: list[str], devices: object, capsys) -> tuple[int, str]:
    """The command in this process, or in its own where it starts ranks (Lightning launches
    them by running the command line again)."""
    if devices == 1:
        from tests.test_bad_input import run_train

        return run_train(args, capsys)
    result = run_cli("train", *args)
    return result.returncode, result.stderr


def run_combination(values: dict[str, object], outputs: Path, capsys) -> None:
    args = [
        f"paths.outputs={outputs}",
        *[a for a in TINY if not a.startswith("optim.batch_size")],
        "trainer.max_epochs=null",
        *[as_override(key, value) for key, value in values.items()],
    ]
    code, stderr = train(args, values.get("trainer.devices", 1), capsys)
    check_outcome(code, stderr, outputs)


@fuzz_settings(suite_examples=6)
@given(values=combinations((LORA, SPARSITY, EXPORT)))
def test_a_sample_of_settings_trains_or_is_refused(values, tmp_path_factory, capsys) -> None:
    """The suite's fixed sample, on one device."""
    run_combination(values, tmp_path_factory.mktemp("fuzz") / "outputs", capsys)


@pytest.mark.fuzz
@fuzz_only_settings(default_examples=30)
@given(values=combinations((LORA, SPARSITY, DEVICES, EXPORT)))
def test_interacting_settings_train_or_are_refused_without_a_traceback(
    values, tmp_path_factory, capsys
) -> None:
    run_combination(values, tmp_path_factory.mktemp("fuzz") / "outputs", capsys)


# -- resume -------------------------------------------------------------------------------------

# The interrupted run's own settings (TINY's): a resume given them again changes nothing.
RESUMED_ARGS = [*TINY, "trainer.checkpoint.every_n_train_steps=1"]
# What a resume may change, and what it must refuse (it would make another run).
HONOURED = [
    "trainer.max_steps=3",
    "trainer.max_epochs=1",
    "trainer.max_epochs=3",
    "trainer.log_every_n_steps=1",
    "trainer.precision=bf16-mixed",
    "trainer.devices=2",
    "export.formats=[hf,onnx]",
    "logger.run_name=again",
]
REFUSED = [
    "optim.lr=0.01",
    "model.n_layers=3",
    "model=gpt-mini",
    "data.max_length=32",
    "data.val_fraction=0.3",
    "lora=default",
    "sparsity=magnitude",
    "seed=1",
    "trainer.val_check_interval=0.5",
    "data=demo_lm",
]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The outputs of a run stopped by SIGTERM after its second step: KILLED, with last.ckpt."""
    outputs = tmp_path_factory.mktemp("interrupted") / "outputs"
    proc = kill_at_step(outputs, 2, signal.SIGTERM, *RESUMED_ARGS)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    (record,) = outputs.glob("runs/*/*/*/run.json")
    assert json.loads(record.read_text())["status"] == "KILLED"
    return outputs


@pytest.mark.fuzz
@fuzz_only_settings(default_examples=12)
@given(
    again=st.booleans(),
    by=st.sampled_from(["folder", "auto"]),
    changes=st.lists(st.sampled_from(HONOURED + REFUSED), min_size=1, max_size=3, unique=True),
)
def test_a_resume_with_changed_overrides_continues_or_is_refused_leaving_the_run_killed(
    interrupted, tmp_path_factory, capsys, again, by, changes
) -> None:
    """Resumed with its settings given again or not, and 1-3 changed: the run continues to
    FINISHED, or is refused naming each change it cannot honour and stays KILLED."""
    outputs = tmp_path_factory.mktemp("resume") / "outputs"
    shutil.copytree(interrupted, outputs)
    (run_json,) = outputs.glob("runs/*/*/*/run.json")
    resume = run_json.parent if by == "folder" else "auto"
    args = [f"paths.outputs={outputs}", *(RESUMED_ARGS if again else []), f"resume={resume}"]
    devices = 2 if "trainer.devices=2" in changes else 1
    code, stderr = train([*args, *changes], devices, capsys)
    check_outcome(code, stderr, outputs)
    status = json.loads(run_json.read_text())["status"]
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == status, (run.info.status, status)
    if code == 0:
        assert status == "FINISHED"
        assert not set(changes) & set(REFUSED), changes
        return
    assert status == "KILLED", stderr[-2000:]
    message = stderr.strip().splitlines()[-1]
    refused = [c for c in changes if c in REFUSED]
    if refused and "would change it" in message:
        for change in refused:
            key = change.split("=")[0]
            assert re.search(rf"\b{re.escape(key)}[.=]", message), (change, message)
