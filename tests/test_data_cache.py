"""The prepared-data cache: a second run opens what the first prepared (the same batches,
without reading the source again), any setting that changes the arrays prepares them anew,
parallel runs prepare once, and a stale or damaged entry is rebuilt, never misread."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config.data import DataConfig
from pipeline.data import demo, preparation
from pipeline.data.loader import split_loader
from pipeline.data.preparation import build_data
from pipeline.errors import UserError
from tests.helpers import cli_env

BASE = {
    "name": "t",
    "val_fraction": 0.1,
    "test_fraction": 0.1,
    "max_length": 48,
    "tokenizer": {"vocab_size": 400, "min_frequency": 1},
}
KINDS = {
    "classification": {"task": "classification", "format": "tsv", "label_column": "label"},
    "causal_lm": {"task": "causal_lm", "format": "tsv", "packing": True},
    "instruct": {"task": "instruct", "format": "jsonl", "packing": True},
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    tsv = demo.ensure_file(folder / "sms.tsv", 400)
    jsonl = demo.ensure_instruct_file(folder / "instruct.jsonl", 300)
    return {"classification": tsv, "causal_lm": tsv, "instruct": jsonl}


def config(files: dict[str, Path], kind: str, cache: Path | None, **changes) -> DataConfig:
    values = {**BASE, **KINDS[kind], "path": str(files[kind]), **changes}
    values["cache_dir"] = None if cache is None else str(cache)
    return DataConfig.model_validate(values)


def batches(bundle) -> list[dict]:
    return [b for split in ("train", "val", "test") for b in split_loader(bundle, split, 16, 0, 0)]


def same(a: list[dict], b: list[dict]) -> bool:
    def equal(x, y) -> bool:
        return torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y

    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("kind", list(KINDS))
def test_cached_batches_are_the_uncached_ones(files, kind, tmp_path, monkeypatch, capsys):
    memory = build_data(config(files, kind, None), 0)
    assert memory.cache is None
    first = build_data(config(files, kind, tmp_path), 0)
    assert "Prepared the data" in capsys.readouterr().out
    # The second run neither reads the records nor tokenizes: it opens the arrays.
    monkeypatch.setattr(preparation, "load_splits", _refuse)
    second = build_data(config(files, kind, tmp_path), 0)
    assert "Prepared the data" not in capsys.readouterr().out
    assert second.cache == first.cache and isinstance(second.splits["train"].ids.flat, np.memmap)
    assert same(batches(memory), batches(first)) and same(batches(memory), batches(second))
    assert second.sources == memory.sources and second.label_names == memory.label_names
    assert second.tokenizer.to_json() == memory.tokenizer.to_json()
    # evaluate brings the checkpoint's tokenizer and labels: the same entry.
    again = build_data(config(files, kind, tmp_path), 0, second.tokenizer, second.label_names)
    assert again.cache == first.cache


def _refuse(*args, **kwargs):
    raise AssertionError("the source was read again")


# Each changes the prepared arrays, so each must prepare anew.
CHANGES = {
    "classification": [
        {"max_length": 32},
        {"val_fraction": 0.2},
        {"test_fraction": 0.05},
        {"tokenizer": {"vocab_size": 500, "min_frequency": 1}},
        {"tokenizer": {"vocab_size": 400, "min_frequency": 2}},
        {"task": "causal_lm", "label_column": None},
        {"long_sequences": "error", "max_length": 128},
    ],
    "causal_lm": [{"packing": False}, {"packing": False, "chunking": "concatenate"}],
    "instruct": [
        {"template": "alpaca"},
        {"train_on": "all"},
        {"packing": False},
        {"fields": {"instruction": "instruction", "input": "none", "output": "output"}},
    ],
}


@pytest.mark.parametrize(
    "kind,change", [(k, c) for k, changes in CHANGES.items() for c in changes], ids=str
)
def test_each_input_of_the_fingerprint_prepares_anew(files, kind, change, tmp_path):
    before = build_data(config(files, kind, tmp_path), 0).cache
    assert build_data(config(files, kind, tmp_path, **change), 0).cache != before
    # What does not change the arrays finds the same entry.
    assert build_data(config(files, kind, tmp_path, num_workers=2, num_proc=2), 0).cache == before


def test_the_seed_the_file_and_the_tokenizer_are_inputs(files, tmp_path):
    path = tmp_path / "sms.tsv"
    header, *rows = files["classification"].read_text().splitlines()
    kinds = [row.split("\t")[header.split("\t").index("label")] for row in rows]
    lines = [f"{header}\tkind", *(f"{row}\t{kind}" for row, kind in zip(rows, kinds, strict=True))]
    path.write_text("\n".join(lines) + "\n")
    cfg = config({"classification": path}, "classification", tmp_path / "cache")
    first = build_data(cfg, 0)
    # Another label column, even one holding the same labels: another entry.
    other_column = cfg.model_copy(update={"label_column": "kind"})
    assert build_data(other_column, 0).cache != first.cache
    assert build_data(cfg, 1).cache != first.cache
    given = build_data(cfg, 0, first.tokenizer).cache
    other = build_data(config(files, "instruct", None), 0).tokenizer
    assert build_data(cfg, 0, other).cache not in (first.cache, given)
    # One message changed: the content digest differs, so the data is prepared again.
    lines = path.read_text().splitlines()
    lines[5] = lines[5].replace("\t", "\tagain ", 1)
    path.write_text("\n".join(lines) + "\n")
    changed = build_data(cfg, 0)
    assert changed.cache != first.cache
    assert changed.sources != first.sources  # the examples digest of its split


def test_a_stale_or_damaged_entry_is_rebuilt(files, tmp_path, capsys):
    cfg = config(files, "instruct", tmp_path)
    folder = build_data(cfg, 0).cache
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "layout": 0}))
    capsys.readouterr()
    assert build_data(cfg, 0).cache == folder
    assert "Prepared the data" in capsys.readouterr().out
    assert json.loads((folder / "meta.json").read_text())["layout"] == meta["layout"]
    (folder / "train" / "ids.npy").unlink()
    rebuilt = build_data(cfg, 0)
    assert "Prepared the data" in capsys.readouterr().out and len(rebuilt.splits["train"]) > 0


def test_parallel_runs_prepare_once(tmp_path):
    data = tmp_path / "instruct.jsonl"
    demo.ensure_instruct_file(data, 4000)
    args = [
        sys.executable, "-m", "pipeline.prepare", f"paths.outputs={tmp_path}", "data=instruct",
        f"data.path={data}", "data.tokenizer.vocab_size=600",
    ]  # fmt: skip
    runs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=cli_env()) for _ in "ab"]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert sum("Prepared the data" in out for out in outputs) == 1, outputs
    cache = tmp_path / "data" / "cache"
    entries = [p for p in cache.iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(entries) == 1 and not list(cache.glob(".*.tmp"))
    assert not (tmp_path / "runs").exists()  # prepare trains nothing and leaves no run folder


def test_concatenated_chunks_are_full_blocks_of_the_joined_texts(files):
    cfg = config(files, "causal_lm", None, packing=False, chunking="concatenate")
    bundle = build_data(cfg, 0)
    split = bundle.splits["train"]
    lengths = split.ids.lengths
    assert (lengths[:-1] == cfg.max_length).all() and 2 <= lengths[-1] <= cfg.max_length
    eos = bundle.tokenizer.eos_id
    texts = preparation.load_splits(cfg, 0)["train"].texts
    joined = [t for ids in bundle.tokenizer.encode_batch(texts) for t in [*ids, eos]]
    assert split.ids.flat.tolist() == joined[: split.tokens]


def test_a_cache_folder_that_cannot_be_made_is_refused(files, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = config(files, "classification", blocker / "cache")
    with pytest.raises(UserError, match=r"data\.cache_dir"):
        cfg.check()  # before any work, with the config's other errors
    with pytest.raises(
        UserError, match=r"data.cache_dir=\S+ cannot be written .* data.cache_dir=null"
    ):
        build_data(cfg, 0)  # and where a config was not checked (evaluate's recorded data)


@pytest.mark.parametrize("kind", ["instruct", "causal_lm"])
def test_preparing_in_processes_gives_the_same_arrays(files, kind, monkeypatch):
    from pipeline.data import encode

    monkeypatch.setattr(encode, "BATCH", 64)  # several batches for the two processes
    alone = build_data(config(files, kind, None), 0)
    shared = build_data(config(files, kind, None, num_proc=2), 0)
    assert same(batches(alone), batches(shared))
