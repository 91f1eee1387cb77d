"""Property-based fuzzing of the configuration (Hypothesis): any value of any type, in range or
beyond it, set on any key of the composed config, is either accepted or refused with a
UserError that names the key. Nothing else may escape validation: every other exception would
reach the user as a traceback."""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from pydantic import BaseModel

from pipeline.cli.app import CheckOutputs, file_store_allowed
from pipeline.config.commands import SCHEMAS
from pipeline.config.paths import CONF_DIR
from pipeline.config.train import TrainConfig
from pipeline.config.validate import validate
from pipeline.errors import UserError
from tests.fuzzing import fuzz_settings
from tests.helpers import compose_config


def leaf_keys(schema: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in schema.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += leaf_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


KEYS = leaf_keys(TrainConfig)
EDGES = st.sampled_from([0, -1, 1, 2**31, -(2**63), 1e-300, 1e300, 0.5, 1.0, "", " ", "auto"])
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    EDGES,
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
    st.dictionaries(st.sampled_from(["a", "type", "name"]), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def composed() -> dict[str, Any]:
    return OmegaConf.to_container(compose_config(["model=gpt-tiny"]), resolve=True)


def _set(config: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(node.get(part), dict) else node
    node[leaf] = value


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,  # the same cases on every run: a failure here is a failure everywhere
)
@given(data=st.data())
def test_any_value_on_any_key_is_accepted_or_refused_in_one_sentence(composed, data) -> None:
    config = copy.deepcopy(composed)
    changes = data.draw(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
    for key, value in changes:
        _set(config, key, value)
    try:
        validate(config, SCHEMAS["config"])
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message.strip() or message.startswith("Config error"), message
        assert "Traceback" not in message


INSTRUCT_ONLY = {"data.template", "data.train_on", "data.fields"}
TABLES_ONLY = {"data.text_column", "data.label_column"}


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml")))
def test_every_data_key_a_preset_can_use_is_settable(preset: str) -> None:
    """A key the schema has but the preset's YAML lacks cannot be set on the command line
    (Hydra: "Key 'packing' is not in struct"): each preset lists every key its tasks use."""
    composed = OmegaConf.to_container(compose_config([f"data={preset}"]), resolve=False)
    data = composed["data"]
    unused = TABLES_ONLY if data["task"] == "instruct" else INSTRUCT_ONLY
    for key in (k for k in KEYS if k.startswith("data.")):
        if any(key == u or key.startswith(f"{u}.") for u in unused):
            continue
        node = composed
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"data={preset} lacks {key}"
            node = node[part]


# -- accepted locations followed to the first real work ------------------------------------
# A value that names a file, a folder or a URL can pass validation and still fail in the
# library that first opens it, where the user would see a traceback. Here such values are set
# on their keys and, where the command would accept them, its first real work is done with
# them: Hydra's run folder, the tracking store and a run in it, the registry, the data files,
# the tokenizer, the weights, the checkpoint, the export folder, the judge. Only a UserError
# (or success) may come out. Each case runs in a new folder of its own (_world), its working
# folder and $HOME, so that relative paths and ~ land in it and no case sees another's files
# (MLflow also keeps each store it opened open, by its URI).

# What a path may name in that folder ({world}/ makes it absolute), and outside it.
PLACES = [
    "data.tsv", "empty.txt", "latin1.tsv", "chat.json", "tokenizer.json", "tok.json",
    "weights.pth", "store.db", "export", "export/hf", "folder", "hf", "a_file", "a_file/below",
    "fifo", "loop", "dangling", "missing", "missing/deeper/x", "~", "~/data.tsv", "", ".",
    "n" * 240, "n" * 250 + ".tsv", "n" * 256,
]  # fmt: skip
SYSTEM = ["/proc/version", "/proc/new"]  # never a file the system needs: a bug could replace it
SAFE_TEXT = st.text(max_size=12).filter(lambda t: not t.startswith(("/", "~")) and ".." not in t)


def _paths(*likely: str) -> st.SearchStrategy[str]:
    """Any path, often one of the places the key's work can read or write."""
    places = st.sampled_from(PLACES)
    named = st.sampled_from(list(likely) or PLACES)
    return st.one_of(
        named, named.map("{world}/".__add__), places, st.sampled_from(SYSTEM), SAFE_TEXT
    )


DATA = _paths("data.tsv", "latin1.tsv", "empty.txt", "chat.json", "missing/x.tsv")
MODELS = _paths("weights.pth", "export", "export/hf", "hf", "tokenizer.json", "folder")
FOLDERS = _paths("missing", "missing/deeper/x", "folder", ".", "n" * 250, "a_file")
URLS = st.sampled_from(
    ["http://127.0.0.1:1", "https://127.0.0.1:1/v1", "http://", "http://:5000",
     "http://127.0.0.1:99999", "http://[::1", "ftp://127.0.0.1/x", "garbage", ""]
)  # fmt: skip
DATABASES = st.sampled_from(
    ["postgresql://user:secret@127.0.0.1:1/db", "mysql+pymysql://u@127.0.0.1:1/db", "mssql://",
     "sqlite://", "sqlite:///:memory:", "databricks", "C:\\mlruns", "file://host/x"]
)  # fmt: skip
STORES = _paths("store.db", "new.db", "data.tsv", "folder", "missing/x.db", "a_file/x.db")
STORE_URIS = st.tuples(st.sampled_from(["sqlite:///", "file://", "file:", ""]), STORES)
NAMES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["prod", "v1x", " ", ".", "..", "..x", "a/b", "/abs", "a:b", "latest", "V2", "x" * 300]
    ),
)
LOCATIONS: dict[str, st.SearchStrategy[Any]] = {
    "paths.outputs": FOLDERS,
    "data.path": DATA,
    "data.val_path": DATA,
    "data.test_path": DATA,
    "data.synthetic_examples": st.sampled_from([None, 20]),
    "data.tokenizer.path": MODELS,
    "model.init_from": MODELS,
    "export.dir": FOLDERS,
    "resume": st.one_of(FOLDERS, st.sampled_from(["auto", "0" * 32])),
    "logger.tracking_uri": st.one_of(STORE_URIS.map("".join), URLS, DATABASES),
    "logger.experiment_name": NAMES,
    "logger.run_name": NAMES,
    "logger.register_as": NAMES,
    "logger.alias": NAMES,
    "ckpt": MODELS,
    "messages": _paths("chat.json", "latin1.tsv", "data.tsv", "empty.txt"),
    "judge.url": URLS,
}
# The command whose schema has the key; every other key is in the training config.
COMMAND_KEYS = {"generate": {"messages"}, "evaluate": {"ckpt", "judge.url"}}
CASES = itertools.count()


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, Path]:
    """What each case's folder copies: GPT weights, a tokenizer, a Hugging Face export, and an
    MLflow store as MLflow makes it (a new one costs 2 to 3 s of migrations)."""
    from tests.bad_files import gpt_weights, hf_export
    from tests.helpers import STORE

    folder = tmp_path_factory.mktemp("originals")
    gpt_weights("weights.pth", emb_dim=64)(folder)
    hf_export(folder)
    shutil.copyfile(folder / "export" / "hf" / "tokenizer.json", folder / "tokenizer.json")
    names = ("weights.pth", "tokenizer.json", "export")
    return {name: folder / name for name in names} | {"store.db": STORE["template"]}


def _world(root: Path, originals: dict[str, Path]) -> None:
    """The files and folders of PLACES."""
    root.mkdir()
    rows = "".join(f"message {i}\t{'spam' if i % 2 else 'ham'}\n" for i in range(30))
    (root / "data.tsv").write_text("text\tlabel\n" + rows)
    (root / "empty.txt").touch()
    (root / "latin1.tsv").write_bytes("text\tlabel\ncaf\xe9\tham\n".encode("latin-1"))
    (root / "chat.json").write_text(json.dumps([{"role": "user", "content": "hi"}]))
    (root / "tok.json").write_text("{")
    for name, original in originals.items():
        (shutil.copytree if original.is_dir() else shutil.copyfile)(original, root / name)
    (root / "folder").mkdir()
    (root / "hf").mkdir()
    (root / "hf" / "config.json").write_text('{"model_type": "gpt2"}')
    (root / "a_file").touch()
    os.mkfifo(root / "fifo")
    (root / "loop").symlink_to(root / "loop")
    (root / "dangling").symlink_to(root / "nowhere")


@pytest.fixture(scope="module")
def commands() -> dict[str, dict[str, Any]]:
    """Each command's composed config, its paths relative: in the case's folder."""
    base = [
        "model=gpt-tiny", "data=tsv", "data.path=data.tsv", "data.synthetic_examples=null",
        "paths.outputs=out", "logger.register_as=fuzzed",
    ]  # fmt: skip
    return {
        name: OmegaConf.to_container(
            compose_config(base + (["ckpt=weights.pth"] if name != "config" else []), name),
            resolve=True,
        )
        for name in ("config", "evaluate", "generate")
    }


@pytest.mark.parametrize("key", sorted(LOCATIONS))
@fuzz_settings(6)
@given(data=st.data())
def test_accepted_locations_reach_the_first_real_work(
    key, originals, commands, tmp_path_factory, monkeypatch, data
):
    """Each key's values, and with them at most one other key's (data.synthetic_examples
    matters with data.path, logger.alias with logger.register_as)."""
    other = data.draw(st.lists(st.sampled_from(sorted(LOCATIONS)), max_size=1), label="other")
    keys = list(dict.fromkeys([key, *other]))
    command = next((c for c, own in COMMAND_KEYS.items() if own & set(keys)), "config")
    file_store = data.draw(st.sampled_from([None, "true", "false", "yes"]), label="file store")
    root = tmp_path_factory.getbasetemp() / f"location-case-{next(CASES)}"
    config = copy.deepcopy(commands[command])
    for name in keys:
        value = data.draw(LOCATIONS[name], label=name)
        _set(config, name, value.replace("{world}", str(root)) if isinstance(value, str) else value)
    _world(root, originals)
    monkeypatch.chdir(root)
    monkeypatch.setenv("HOME", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if file_store is None:
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", file_store)
    try:
        _follow(config, command, set(keys), originals["store.db"])
    finally:
        os.chdir(root.parent)
        shutil.rmtree(root)


def _follow(config: dict[str, Any], command: str, keys: set[str], store: Path) -> None:
    """The command's start with `config`: refused, or on to the first work with `keys`."""
    try:
        _run_folder(config)
        cfg = validate(config, SCHEMAS[command], file_store_allowed())
    except UserError:
        event("refused by validation")
        return
    try:
        _first_work(cfg, keys, store)
        event("accepted: the work was done")
    except UserError:
        event("accepted: refused by the work")  # in one paragraph, as a UserError is


def _run_folder(config: dict[str, Any]) -> None:
    """What the command does before validation: CheckOutputs, then Hydra makes the run folder
    of the raw values (conf/config.yaml's hydra.run.dir)."""
    try:
        CheckOutputs._check(OmegaConf.create(config))
    except SystemExit as exc:
        assert exc.code == 2
        raise UserError("refused by CheckOutputs") from None
    outputs, name = config["paths"]["outputs"], config["logger"]["experiment_name"]
    Path(f"{outputs}/runs/{name}/2026-01-01/00-00-00").mkdir(parents=True, exist_ok=True)


def _first_work(cfg: Any, keys: set[str], store: Path) -> None:
    """What the commands do first with each drawn key's value, in their order."""
    from pipeline.assembly.restore import load_pretrained, load_trained
    from pipeline.data.records import load_splits
    from pipeline.data.tokenizer import TextTokenizer

    if keys & {"logger.tracking_uri", "paths.outputs", "logger.experiment_name", "resume"}:
        _tracking(cfg, store)
    if keys & {"logger.register_as", "logger.alias"}:
        _registry(cfg.logger.register_as, cfg.logger.alias, store)
    if "judge.url" in keys and cfg.judge.url:
        from pipeline.evaluation.judge import check_judge

        check_judge(cfg.judge.url, timeout=1.0)
    if "ckpt" in keys:
        load_trained(cfg.ckpt)
    if "messages" in keys:
        from pipeline.generate import _messages

        _messages(cfg)
    if "model.init_from" in keys and cfg.model.init_from:
        load_pretrained(cfg.model.init_from)
    if "data.tokenizer.path" in keys and cfg.data.tokenizer.path:
        TextTokenizer.load(cfg.data.tokenizer.path)
    if keys & {"data.path", "data.val_path", "data.test_path", "data.synthetic_examples"}:
        load_splits(cfg.data, cfg.seed)
    if "export.dir" in keys and cfg.export.dir:
        from pipeline.assembly.trained import Trained
        from pipeline.formats import export_trained
        from pipeline.model.gpt import GPTConfig, GPTModel

        model = GPTModel(GPTConfig(600, 16, 8, n_heads=2, n_layers=1))
        export_trained(Trained(model, None), ["weights"], Path(cfg.export.dir))


def _tracking(cfg: Any, store: Path) -> None:
    """train's order: the store checked, then the Recorder opens the experiment and starts
    the run (a new SQLite store is a copy of the suite's, which MLflow migrated once)."""
    from pipeline.run.resume import locate_resume
    from pipeline.tracking.client import open_experiment
    from pipeline.tracking.uri import check_store, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.logger.tracking_uri, None, cfg.paths.outputs)
    database = Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("sqlite:///") and database.parent.is_dir() and not os.path.lexists(database):
        shutil.copyfile(store, database)
    check_store(uri, timeout=1.0)
    if cfg.resume:
        locate_resume(cfg.resume, Path(cfg.paths.outputs), cfg.logger.experiment_name, uri)
    client, experiment_id = open_experiment(uri, cfg.logger.experiment_name, cfg.paths.outputs)
    client.create_run(experiment_id, run_name=cfg.logger.run_name)


def _registry(name: str | None, alias: str, store: Path) -> None:
    """What registering the final model asks of MLflow's registry: the name and the alias."""
    from mlflow.tracking import MlflowClient

    if name is None:
        return
    registry = Path.cwd() / "registry.db"
    shutil.copyfile(store, registry)
    client = MlflowClient(f"sqlite:///{registry}")
    client.create_registered_model(name)
    version = client.create_model_version(name, source=str(Path.cwd()))
    client.set_registered_model_alias(name, alias, version.version)
