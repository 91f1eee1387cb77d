"""Every mistake a user can make, as one table: what they type, and what they are told.

Each row runs `python -m pipeline.train` (or the command it names) through its real entry
point (Hydra included, in this process to save the start-up time;
`test_a_refused_run_in_a_real_process` checks the process itself). Every row must: exit
non-zero within seconds, print one paragraph that names the problem (no traceback), leave no
half-written file, and leave no MLflow run in RUNNING: no run at all when the mistake is caught
before training, else one FAILED run with the reason as its `error` tag. The rows of values
that name a file, a folder or a URL are in tests/bad_locations.py. docs/troubleshooting.md
lists the same errors.
"""

from __future__ import annotations

import importlib
import re
import resource
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.bad_files import (
    code_pickle,
    damaged_pickle,
    gguf_damaged_value,
    gguf_file,
    gpt_weights,
    hf_folder_with_layers,
    integer_weights,
    truncated_weights,
)
from tests.bad_locations import LOCATIONS
from tests.bad_table import NO_GPU, TSV_ROWS, Case, demo_rows, tsv, write
from tests.helpers import TINY, run_cli

CASES: dict[str, Case] = {
    # -- config: unknown names ----------------------------------------------------------------
    "unknown key (added with +)": Case("+model.n_head=4", r"unknown key 'model.n_head'.*n_heads"),
    "unknown key": Case("model.emb_dimm=3", r"Key 'emb_dimm' is not in struct", exit_code=1),
    "unknown group option": Case("lora=bogus", r"Could not find 'lora/bogus'", exit_code=1),
    "unknown optimizer name": Case("optim.name=adam", r"optim.name='adam'.*'adamw' or 'sgd'"),
    "unknown scheduler": Case("optim.scheduler=step", r"'cosine', 'linear' or 'constant'"),
    "unknown precision": Case("trainer.precision=fp8", r"'32-true', 'bf16-mixed' or '16-mixed'"),
    "unknown accelerator": Case("trainer.accelerator=tpu", r"'auto', 'cpu', 'gpu'"),
    "unknown data format": Case(
        "data.format=xlsx", r"'auto', 'tsv', 'csv', 'jsonl', 'json', 'text', 'parquet' or 'arrow'"
    ),
    "unknown export format": Case("export.formats=[hf,tflite]", r"export.formats.1='tflite'"),
    "unknown lora bias": Case("lora=default lora.bias=some", r"'none', 'all' or 'lora_only'"),
    "an ONNX export as pretrained weights": Case(
        "model.init_from={tmp}/export/onnx",
        r"export/onnx is not a folder this pipeline reads \(an ONNX export.*Hugging Face folder",
        write("export/onnx/model.onnx", b"onnx bytes"),
    ),
    "a ~ path unquoted (Hydra's lexer refuses it)": Case(
        "data.path=~/my.tsv",
        r"The override 'data.path=~/my.tsv' could not be parsed .*'data.path=\"~/my.tsv\"'",
    ),
    "validation interval longer than an epoch": Case(
        "trainer.val_check_interval=500",
        r"val_check_interval=500 batches, but an epoch of this data has 20 training batches",
    ),
    "gguf export of a classifier": Case(
        "export.formats=[gguf]", r"export.formats=\['gguf'\].*language models"
    ),
    "not a GGUF file": Case(
        "model.init_from={tmp}/model.gguf",
        r"not a GGUF file \(it does not start with the GGUF magic",
        write("model.gguf", b"PK\x03\x04 a zip, not a model" * 100),
    ),
    "truncated GGUF file": Case(
        "model.init_from={tmp}/cut.gguf",
        r"cut.gguf could not be read as GGUF .*truncated",
        gguf_file("cut.gguf", cut=True),
    ),
    "GGUF of an architecture we cannot train": Case(
        "model.init_from={tmp}/mamba.gguf",
        r"holds a 'mamba' model.*reads GGUF files of gpt2 .*llama",
        gguf_file("mamba.gguf", architecture="mamba"),
    ),
    # -- config: wrong types ------------------------------------------------------------------
    "wrong type (int)": Case("model.n_layers=two", r"model.n_layers='two'.*valid integer"),
    "wrong type (size)": Case("export.max_shard_size=2TB", r"500MB, 5GB or 2GiB"),
    # -- config: values out of range ----------------------------------------------------------
    "lr = 0": Case("optim.lr=0", r"optim.lr=0 .*greater than 0"),
    "lr < 0": Case("optim.lr=-1e-3", r"optim.lr=-0.001 .*greater than 0"),
    "batch size 0": Case("optim.batch_size=0", r"optim.batch_size=0 .*greater than 0"),
    "emb_dim 0": Case("model.emb_dim=0", r"model.emb_dim=0 .*greater than 0"),
    "dropout >= 1": Case("model.drop_rate=1.5", r"model.drop_rate=1.5 .*less than 1"),
    "dropout < 0": Case("model.drop_rate=-0.1", r"model.drop_rate=-0.1 .*greater than or equal"),
    "lora dropout 1": Case("lora=default lora.dropout=1", r"lora.dropout=1 .*less than 1"),
    "lora r <= 0": Case("lora=default lora.r=0", r"lora.r=0 .*greater than 0"),
    "sparsity >= 1": Case(
        "sparsity=magnitude sparsity.final=1.0", r"sparsity.final=1.0 .*less than 1"
    ),
    "sparsity < 0": Case(
        "sparsity=magnitude sparsity.final=-0.5", r"sparsity.final=-0.5 .*greater than or equal"
    ),
    "N:M with N >= M": Case("sparsity=nm_2_4 sparsity.pattern=4:4", r"N:M with 0 < N < M"),
    "n_heads not dividing emb_dim": Case("model.n_heads=5", r"divisible by model.n_heads"),
    "max_length > context": Case("data.max_length=4096", r"model.context_length \(128\)"),
    "split fractions >= 1": Case(
        "data.val_fraction=0.6 data.test_fraction=0.5", r"data.val_fraction=0.6 .*below 1"
    ),
    "endless training": Case("trainer.max_epochs=null", r"would never end"),
    "max_steps 0": Case("trainer.max_steps=0", r"positive step count"),
    "val interval > 1": Case("trainer.val_check_interval=1.5", r"fraction of an epoch"),
    "16-mixed on the CPU": Case(
        "trainer.accelerator=cpu trainer.precision=16-mixed", r"needs a GPU"
    ),
    "adapter export without lora": Case("export.formats=[hf,adapter]", r"choose a lora preset"),
    "model=hf without weights": Case("model=hf", r"model.init_from is required"),
    "empty experiment name": Case("logger.experiment_name=''", r"at least 1 character"),
    "required value missing": Case("data=csv", r"data.path is required"),
    "classification without labels": Case("data.label_column=null", r"classification needs"),
    # -- data ---------------------------------------------------------------------------------
    "missing data file": Case(
        "data=tsv data.synthetic_examples=null data.path={tmp}/nope.tsv", r"no such file"
    ),
    "empty dataset": Case(
        "data=tsv data.synthetic_examples=null data.path={tmp}/empty.tsv",
        r"holds no examples",
        write("empty.tsv", "text\tlabel\n"),
    ),
    "missing text column": Case(
        "data=tsv data.synthetic_examples=null data.path={tmp}/d.tsv",
        r"no column 'text' \(data.text_column\)\. Its columns are: sms, label",
        write("d.tsv", tsv(demo_rows(), "sms\tlabel")),
    ),
    "missing label column": Case(
        "data=tsv data.synthetic_examples=null data.path={tmp}/d.tsv data.label_column=category",
        r"no column 'category' \(data.label_column\)",
        write("d.tsv", tsv(demo_rows())),
    ),
    "a row without a label": Case(
        "data=tsv data.synthetic_examples=null data.path={tmp}/d.tsv",
        r"row 3, has no value for column 'label'",
        write("d.tsv", "text\tlabel\nhello\tham\nlonely\n" + tsv(demo_rows())[11:]),
    ),
    "one class only": Case(
        "data=tsv data.synthetic_examples=null data.path={tmp}/d.tsv",
        r"1 distinct label\(s\).*needs at least 2",
        write("d.tsv", tsv([(t, "ham") for t in TSV_ROWS])),
    ),
    "malformed JSONL line": Case(
        "data=jsonl data.synthetic_examples=null data.path={tmp}/d.jsonl",
        r"d.jsonl, line 3, is not valid JSON",
        write("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": \n'),
    ),
    "JSONL line that is not an object": Case(
        "data=jsonl data.synthetic_examples=null data.path={tmp}/d.jsonl",
        r"line 2, holds a JSON list",
        write("d.jsonl", '{"text": "a", "label": "x"}\n["b", "y"]\n'),
    ),
    "non-UTF-8 text": Case(
        "data=tsv data.synthetic_examples=null data.path={tmp}/d.tsv",
        r"line 4, is not UTF-8 text \(byte 0xe9",
        write("d.tsv", tsv(demo_rows()[:2]).encode() + "caf\u00e9\tham\n".encode("latin-1")),
    ),
    "JSON list where text belongs": Case(
        "data=jsonl data.synthetic_examples=null data.path={tmp}/d.jsonl",
        r"d.jsonl, line 2, holds a JSON list in column 'text'",
        write("d.jsonl", '{"text": "a", "label": "x"}\n{"text": ["b"], "label": "y"}\n'),
    ),
    "a chat turn whose role is a list": Case(
        "data=instruct data.synthetic_examples=null data.path={tmp}/d.jsonl data.format=jsonl",
        r"d.jsonl, line 1: unknown role \['human'\]; the roles are system, human",
        write(
            "d.jsonl",
            '{"conversations": [{"from": ["human"], "value": "hi"}, {"from": "gpt", "value": "yo"}]}\n',
        ),
    ),
    "a label only the test split has": Case(
        "data=tsv data.synthetic_examples=null data.path={tmp}/d.tsv data.test_path={tmp}/t.tsv",
        r"test split of .*t.tsv has labels not seen in training: \['eggs'\]",
        lambda tmp: (
            write("d.tsv", tsv(demo_rows()))(tmp),
            write("t.tsv", tsv([("x", "eggs")]))(tmp),
        ),
    ),
    "text longer than the context (data.long_sequences=error)": Case(
        "data.max_length=4 data.long_sequences=error",
        r"longer than data.max_length=4 tokens.*data.long_sequences=truncate",
    ),
    # -- weights ------------------------------------------------------------------------------
    "missing weights": Case("model.init_from={tmp}/nope.safetensors", r"not found"),
    "truncated weights": Case(
        "model.init_from={tmp}/cut.safetensors", r"truncated or corrupt", truncated_weights
    ),
    "corrupt weights": Case(
        "model.init_from={tmp}/junk.pth",
        r"junk.pth could not be read.*truncated or corrupt",
        write("junk.pth", b"not a weights file at all" * 10),
    ),
    "a damaged torch file": Case(
        "model.init_from={tmp}/flipped.pth",
        r"flipped.pth could not be read \(.*\); it may be truncated or corrupt",
        damaged_pickle,
    ),
    "weights that are not floating point": Case(
        "model.init_from={tmp}/int8.safetensors",
        r"int8.safetensors include tensors that are not floating point \(.*torch.int8",
        integer_weights,
    ),
    "config.json that is not JSON": Case(
        "model.init_from={tmp}/hf",
        r"hf/config.json could not be read as JSON",
        write("hf/config.json", '{"model_type": "gpt2", '),
    ),
    "config.json with a shape field of the wrong type": Case(
        "model.init_from={tmp}/hf",
        r"hf/config.json has n_embd='64', but a GPT-2 config.json gives it as a positive whole",
        write(
            "hf/config.json",
            '{"model_type": "gpt2", "vocab_size": 600, "n_positions": 128, "n_embd": "64"}',
        ),
    ),
    "config.json with a layer count its weights do not have": Case(
        "model.init_from={tmp}/hf",
        r"hf/config.json has n_layer=1000000000, but the weights beside it hold 2 blocks",
        hf_folder_with_layers(10**9),
    ),
    "GGUF with a damaged value": Case(
        "model.init_from={tmp}/bad.gguf",
        r"bad.gguf could not be read as GGUF .*truncated or corrupt",
        gguf_damaged_value,
    ),
    "a pickle that would run code": Case(
        "model.init_from={tmp}/evil.pth", r"Refused to load .*evil.pth.*can run code", code_pickle
    ),
    "shape-mismatched weights": Case(
        "model.init_from={tmp}/narrow.pth",
        r"tok_emb.weight \(600, 32\) in the file vs \(\d+, 64\) in the model.*emb_dim probably",
        gpt_weights("narrow.pth", emb_dim=32),
    ),
    # -- machine ------------------------------------------------------------------------------
    "output folder not writable": Case(
        "paths.outputs={tmp}/a_file/outputs",
        r"paths.outputs='.*a_file/outputs' is not allowed: a folder you can write in \(Not a dir",
        write("a_file", ""),
    ),
    "GPU asked for where none exists": Case(
        "trainer=gpu", r"no CUDA device.*trainer=cpu", marks=[NO_GPU]
    ),
    # -- while training -----------------------------------------------------------------------
    "NaN or inf loss": Case(
        "optim.lr=1e30 trainer.checkpoint.every_n_train_steps=1",
        r"loss became (nan|inf) at step \d+ .*last good checkpoint is .*last.ckpt",
        during_training=True,
    ),
    "trainer settings Lightning refuses": Case(
        "trainer.strategy=bogus",
        r"Lightning refused the trainer settings.*bogus",
        during_training=True,
    ),
    "disk full during a checkpoint": Case(
        "model=gpt-mini trainer.checkpoint.every_n_train_steps=1",
        r"No space left to write the checkpoint .*earlier checkpoints are intact",
        during_training=True,
    ),
    **LOCATIONS,
}


@pytest.fixture(scope="module", autouse=True)
def _imported() -> None:
    """Import the heavy modules once, so that timings measure the work, not the imports."""
    import pipeline.run.run  # noqa: F401


def run_train(args: list[str], capsys, command: str = "train") -> tuple[int, str]:
    """python -m pipeline.<command> <args> (train unless told), in this process: (exit code,
    stderr)."""
    from hydra.core.global_hydra import GlobalHydra

    main = importlib.import_module(f"pipeline.{command}").main
    GlobalHydra.instance().clear()
    argv, sys.argv = sys.argv, [f"pipeline.{command}", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return code, capsys.readouterr().err


class FileSizeLimit:
    """A real write failure (EFBIG, as a full disk gives ENOSPC) for files beyond `limit`
    bytes: the data, tokenizer and MLflow store fit, a gpt-mini checkpoint does not."""

    def __init__(self, limit: int):
        self.limit = limit

    def __enter__(self):
        self.saved = resource.getrlimit(resource.RLIMIT_FSIZE)
        self.handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.saved[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.saved)
        signal.signal(signal.SIGXFSZ, self.handler)


@pytest.mark.parametrize("name", [pytest.param(n, marks=c.marks, id=n) for n, c in CASES.items()])
def test_bad_input(name: str, tmp_path: Path, capsys, monkeypatch) -> None:
    case = CASES[name]
    if case.setup:
        case.setup(tmp_path)
    for variable, value in case.env.items():
        monkeypatch.setenv(variable, value)
    outputs = tmp_path / "outputs"
    args = [f"paths.outputs={outputs}", *TINY, *case.args.format(tmp=tmp_path).split()]
    limit = FileSizeLimit(8_000_000) if "disk full" in name else None
    started = time.monotonic()
    if limit:
        with limit:
            code, stderr = run_train(args, capsys, case.command)
    else:
        code, stderr = run_train(args, capsys, case.command)
    elapsed = time.monotonic() - started

    assert code == case.exit_code, stderr
    assert elapsed < 30, f"took {elapsed:.0f} s"
    assert "Traceback" not in stderr
    message = stderr.strip().splitlines()
    if case.exit_code == 2:  # ours: one paragraph, on the last line
        assert message[-1].startswith("error: "), stderr
        assert re.search(case.expect, message[-1]), message[-1]
    else:  # Hydra's own message
        assert re.search(case.expect, stderr), stderr
    assert not [p for p in tmp_path.rglob("*.tmp")], "a half-written file was left"
    assert not (tmp_path / "pwned").exists()

    runs = []
    if (outputs / "mlflow.db").is_file():
        client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    if case.during_training:
        (run,) = runs
        assert run.info.status == "FAILED"
        assert message[-1].removeprefix("error: ") == run.data.tags["error"]
        for checkpoint in outputs.glob("runs/*/*/*/checkpoints/*.ckpt"):  # the good ones
            state = torch.load(checkpoint, weights_only=True)["state_dict"]
            assert all(torch.isfinite(v).all() for v in state.values()), checkpoint
    else:
        assert runs == []  # refused before any run started
        assert not list(outputs.glob("runs/*/*/*/*")), "a refused run left its folder"


def test_a_refused_run_in_a_real_process(tmp_path: Path) -> None:
    """The same guarantees for a process, the way a user meets them."""
    (tmp_path / "d.tsv").write_text(tsv([(t, "ham") for t in TSV_ROWS]))
    result = run_cli(
        "train", f"paths.outputs={tmp_path}", *TINY, "data=tsv", f"data.path={tmp_path}/d.tsv"
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: The training split has 1 distinct label(s)")
    assert "Traceback" not in result.stdout + result.stderr


def test_a_diverged_loss_is_found_at_its_step_however_late_it_is_read(
    tmp_path: Path, capsys
) -> None:
    """The loss is read on the host only at logged steps and before checkpoints, so that a GPU
    is not stalled at every step; read late or at once, the error names the same first
    non-finite step, and nothing non-finite was saved."""
    messages = {}
    for name, every in {"at once": 1, "late": 50}.items():
        outputs = tmp_path / name
        args = [f"paths.outputs={outputs}", *TINY, "optim.lr=1e30"]
        code, stderr = run_train([*args, f"trainer.log_every_n_steps={every}"], capsys)
        assert code == 2, stderr
        messages[name] = re.search(r"loss became (nan|inf) at (step \d+ \(.*?\))", stderr)[2]
        for checkpoint in outputs.glob("runs/*/*/*/checkpoints/*.ckpt"):
            state = torch.load(checkpoint, weights_only=True)["state_dict"]
            assert all(torch.isfinite(v).all() for v in state.values()), checkpoint
    assert messages["late"] == messages["at once"]
