"""The schema: good presets compose; refusals come before torch is imported. Every bad value
and its message is in the table of tests/test_bad_input.py."""

from __future__ import annotations

import sys

import pytest

from pipeline.config.commands import SCHEMAS
from pipeline.config.paths import CONF_DIR
from pipeline.config.validate import validate
from tests.helpers import compose_config, run_cli


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
def test_every_entry_point_config_composes(name: str, tmp_path) -> None:
    cfg = compose_config([f"ckpt={tmp_path}"] if name != "config" else [], config_name=name)
    assert validate(cfg, SCHEMAS[name]).seed == 42


def test_cli_config_error_exits_2_without_traceback_or_torch() -> None:
    result = run_cli("train", "model.n_heads=3", "paths.outputs=/tmp/never-written")
    assert result.returncode == 2
    assert result.stderr.startswith("error: Config error: model.n_heads=3 is not allowed")
    assert "Traceback" not in result.stderr + result.stdout


def test_validation_does_not_import_torch() -> None:
    code = (
        "import sys; from tests.helpers import compose_config; from pipeline.config.validate import "
        "validate; validate(compose_config([])); "
        "assert not {'torch','pytorch_lightning','mlflow'} & set(sys.modules), 'heavy import'"
    )
    import subprocess

    from pipeline.config.paths import PROJECT_ROOT

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
        [sys.executable, "-m", "pipeline.generate", "ckpt=.", "max_new_tokens=-1"],
        cwd=empty,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "max_new_tokens=-1" in result.stderr
    assert empty.is_dir()


def test_help_says_what_each_command_does_and_lists_the_others() -> None:
    train = run_cli("train", "--help")
    assert train.returncode == 0 and train.stdout.startswith("python -m pipeline.train: fine-tune")
    assert "python -m pipeline.evaluate ckpt=<run>" in train.stdout  # the other commands
    assert "== Configuration groups ==" in train.stdout and "lora: " in train.stdout
    evaluate = run_cli("evaluate", "--help")
    assert evaluate.stdout.startswith("python -m pipeline.evaluate ckpt=<run|.ckpt|export dir>")


def test_paths_are_recorded_absolute_with_home_expanded(tmp_path, monkeypatch) -> None:
    """A run records where its files are, so evaluate ckpt=<run> finds them from anywhere."""
    (tmp_path / "my.tsv").write_text("label\ttext\nham\thi\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    overrides = ["data=tsv", "data.path=my.tsv", "data.synthetic_examples=null"]
    cfg = validate(compose_config([*overrides, "data.val_path='~/my.tsv'"]), SCHEMAS["config"])
    assert cfg.data.path == cfg.data.val_path == str(tmp_path / "my.tsv")


def test_evaluate_says_when_the_data_the_checkpoint_recorded_is_not_here(tmp_path) -> None:
    from pipeline.errors import UserError
    from pipeline.evaluation.split import data_config

    (tmp_path / "my.tsv").write_text("label\ttext\nham\thi\n")
    overrides = ["data=tsv", f"data.path={tmp_path / 'my.tsv'}", "data.synthetic_examples=null"]
    cfg = validate(compose_config(overrides), SCHEMAS["config"])
    recorded = cfg.model_dump(mode="json")
    recorded["data"]["path"] = "my.tsv"  # as runs before this version recorded it
    with pytest.raises(
        UserError, match=r"trained on my.tsv \(data.path\), which does not exist here"
    ):
        data_config(cfg, recorded, ["ckpt=<run>"])
    assert data_config(cfg, cfg.model_dump(mode="json"), [])[0].path == str(tmp_path / "my.tsv")
