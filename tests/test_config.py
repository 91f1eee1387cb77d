"""The schema: bad values are refused with a message naming the key, the value and what is
allowed, before torch is imported; good presets compose."""

from __future__ import annotations

import sys

import pytest

from pipeline.config import CONF_DIR, validate
from pipeline.errors import UserError
from tests.conftest import compose_config, run_cli

BAD_VALUES = [
    # (override, key named in the message, what the message must also say)
    ("model.n_heads=5", "model.n_heads=5", "divisible by model.n_heads"),
    ("model.emb_dim=0", "model.emb_dim=0", "greater than 0"),
    ("model.n_layers=two", "model.n_layers='two'", "valid integer"),
    ("model.drop_rate=1.5", "model.drop_rate=1.5", "less than 1"),
    ("optim.lr=0", "optim.lr=0", "greater than 0"),
    ("optim.lr=-1e-3", "optim.lr=-0.001", "greater than 0"),
    ("optim.batch_size=0", "optim.batch_size=0", "greater than 0"),
    ("optim.name=adam", "optim.name='adam'", "'adamw' or 'sgd'"),
    ("optim.scheduler=step", "optim.scheduler='step'", "'cosine', 'linear' or 'constant'"),
    ("trainer.precision=fp8", "trainer.precision='fp8'", "'32-true', 'bf16-mixed' or '16-mixed'"),
    ("trainer.accelerator=tpu", "trainer.accelerator='tpu'", "'auto', 'cpu', 'gpu'"),
    (
        "trainer.accelerator=cpu trainer.precision=16-mixed",
        "trainer.precision='16-mixed'",
        "needs a GPU",
    ),
    ("trainer.max_epochs=null", "trainer.max_steps=-1", "would never end"),
    ("trainer.max_steps=0", "trainer.max_steps=0", "positive step count"),
    ("trainer.val_check_interval=1.5", "trainer.val_check_interval=1.5", "fraction of an epoch"),
    ("data.max_length=4096", "data.max_length=4096", "model.context_length (256)"),
    ("data.val_fraction=0.6 data.test_fraction=0.5", "data.val_fraction=0.6", "below 1"),
    ("data.label_column=null", "data.label_column=None", "classification needs"),
    ("data.format=parquet", "data.format='parquet'", "'tsv', 'csv', 'jsonl' or 'text'"),
    ("data=tsv data.path=/no/such/file.tsv", "data.path='/no/such/file.tsv'", "no such file"),
    (
        "export.formats=[hf,tflite]",
        "export.formats.1='tflite'",
        "'hf', 'weights', 'onnx', 'adapter' or 'merged'",
    ),
    ("export.formats=[hf,adapter]", "export.formats=['hf', 'adapter']", "choose a lora preset"),
    ("lora=default lora.r=0", "lora.r=0", "greater than 0"),
    ("lora=default lora.dropout=1", "lora.dropout=1", "less than 1"),
    ("lora=default lora.bias=some", "lora.bias='some'", "'none', 'all' or 'lora_only'"),
    ("export.max_shard_size=2TB", "export.max_shard_size='2TB'", "500MB, 5GB or 2GiB"),
    ("model=hf", "model.init_from", "required"),
    ("model.init_from=/no/such/dir", "model.init_from='/no/such/dir'", "not found"),
    ("logger.experiment_name=''", "logger.experiment_name=''", "at least 1 character"),
]


@pytest.mark.parametrize(("overrides", "key", "allowed"), BAD_VALUES)
def test_bad_value_names_key_value_and_allowed(overrides: str, key: str, allowed: str) -> None:
    with pytest.raises(UserError) as info:
        validate(compose_config(overrides.split()))
    message = str(info.value)
    assert key in message
    assert allowed in message
    assert "\n" not in message  # one paragraph


def test_unknown_key_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"unknown key 'model.n_head'.*n_heads"):
        validate(compose_config(["+model.n_head=4"]))


def test_missing_required_value() -> None:
    with pytest.raises(UserError, match=r"data.path is required"):
        validate(compose_config(["data=csv"]))


@pytest.mark.parametrize(
    "preset", sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if p.stem != "hf")
)
def test_model_presets_validate(preset: str) -> None:
    cfg = validate(compose_config([f"model={preset}", "data.max_length=64"]))
    assert cfg.model.name == preset


def test_gpt2_family_shapes() -> None:
    shapes = {
        name: validate(compose_config([f"model={name}"])).model
        for name in ("gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl")
    }
    got = {n: (m.emb_dim, m.n_layers, m.n_heads, m.context_length) for n, m in shapes.items()}
    assert got == {
        "gpt2-small": (768, 12, 12, 1024),
        "gpt2-medium": (1024, 24, 16, 1024),
        "gpt2-large": (1280, 36, 20, 1024),
        "gpt2-xl": (1600, 48, 25, 1024),
    }
    assert all(m.vocab_size == 50257 and m.qkv_bias for m in shapes.values())


@pytest.mark.parametrize("name", ["config", "evaluate", "generate", "export"])
def test_every_entry_point_config_composes(name: str) -> None:
    cfg = compose_config(["ckpt=x"] if name != "config" else [], config_name=name)
    assert validate(cfg).seed == 42


def test_cli_config_error_exits_2_without_traceback_or_torch() -> None:
    result = run_cli("train", "model.n_heads=3", "paths.outputs=/tmp/never-written")
    assert result.returncode == 2
    assert result.stderr.startswith("error: Config error: model.n_heads=3 is not allowed")
    assert "Traceback" not in result.stderr + result.stdout


def test_validation_does_not_import_torch() -> None:
    code = (
        "import sys; from tests.conftest import compose_config; from pipeline.config import "
        "validate; validate(compose_config([])); "
        "assert not {'torch','pytorch_lightning','mlflow'} & set(sys.modules), 'heavy import'"
    )
    import subprocess

    from pipeline.config import PROJECT_ROOT

    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)


def test_cfg_job_prints_config_without_running() -> None:
    result = run_cli("train", "--cfg", "job", "model=gpt2-small")
    assert result.returncode == 0
    assert "emb_dim: 768" in result.stdout


def test_a_refused_command_never_removes_the_working_directory(tmp_path) -> None:
    """generate and export run in place (no run folder): a config error must leave the
    current directory alone, even an empty one."""
    import subprocess

    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.generate", "ckpt=x", "max_new_tokens=-1"],
        cwd=empty,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "max_new_tokens=-1" in result.stderr
    assert empty.is_dir()
