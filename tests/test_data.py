"""Reading files, the deterministic split, tokenization, and batches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from pipeline.config.data import DataConfig
from pipeline.data import demo as demo_data
from pipeline.data.loader import IGNORE_INDEX, Collator
from pipeline.data.preparation import build_data
from pipeline.data.records import read_records, split_indices
from pipeline.data.tokenizer import TextTokenizer
from pipeline.errors import UserError


def data_cfg(path: Path, **overrides) -> DataConfig:
    base = dict(
        name="t",
        task="classification",
        format="tsv",
        path=str(path),
        text_column="text",
        label_column="label",
        val_fraction=0.2,
        test_fraction=0.2,
        max_length=16,
        tokenizer={"vocab_size": 300, "min_frequency": 1},
    )
    return DataConfig.model_validate({**base, **overrides})


def test_split_is_deterministic_disjoint_and_complete() -> None:
    a = split_indices(100, 0.1, 0.2, seed=7)
    assert a == split_indices(100, 0.1, 0.2, seed=7)
    assert a != split_indices(100, 0.1, 0.2, seed=8)
    train, val, test = a
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    assert sorted(train + val + test) == list(range(100))


def test_demo_data_is_the_same_everywhere(tmp_path: Path) -> None:
    path = demo_data.ensure_file(tmp_path / "demo.tsv", 200)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    again = demo_data.ensure_file(tmp_path / "again.tsv", 200)
    assert hashlib.sha256(again.read_bytes()).hexdigest() == digest
    rows = demo_data.generate(2000)
    spam = sum(label == "spam" for _, label in rows) / len(rows)
    assert 0.3 < spam < 0.4


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
def test_readers_take_the_configured_columns(tmp_path: Path, fmt: str) -> None:
    rows = [{"sms": "hello there", "y": "ham"}, {"sms": "WIN, now", "y": "spam"}]
    path = tmp_path / f"d.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        sep = "\t" if fmt == "tsv" else ","
        path.write_text("y" + sep + "sms\n" + "".join(f'{r["y"]}{sep}"{r["sms"]}"\n' for r in rows))
    records = read_records(path, data_cfg(path, format=fmt, text_column="sms", label_column="y"))
    assert records.texts == ["hello there", "WIN, now"]
    assert records.labels == ["ham", "spam"]


def test_text_format_is_one_example_per_line(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("first line\n\n  second line \n")
    cfg = data_cfg(path, format="text", task="causal_lm", label_column=None)
    assert read_records(path, cfg).texts == ["first line", "second line"]


def test_labels_unseen_in_training_are_refused(tmp_path: Path) -> None:
    train, test = tmp_path / "train.tsv", tmp_path / "test.tsv"
    train.write_text("label\ttext\n" + "a\tx y\nb\ty z\n" * 5)
    test.write_text("label\ttext\nc\tx\n")
    cfg = data_cfg(train, test_path=str(test), val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(
        UserError, match=r"test split of .*test.tsv has labels not seen in training: \['c'\]"
    ):
        build_data(cfg, seed=0)


def test_build_data_tokenizes_truncates_and_maps_labels(tmp_path: Path, capsys) -> None:
    path = demo_data.ensure_file(tmp_path / "demo.tsv", 300)
    bundle = build_data(data_cfg(path, max_length=8), seed=1)
    assert bundle.label_names == ["ham", "spam"] and bundle.n_outputs == 1
    assert sum(len(s.ids) for s in bundle.splits.values()) == 300
    assert max(len(ids) for ids in bundle.splits["train"].ids) == 8
    # The truncation is announced once, with how many texts and the longest one.
    longer = sum(len(ids) == 8 for split in bundle.splits.values() for ids in split.ids)
    warning = capsys.readouterr().err
    assert warning.startswith("warning: ") and warning.count("\n") == 1
    count = int(warning.removeprefix("warning: ").split()[0])
    assert 0 < count <= longer and "longer than data.max_length=8 tokens" in warning
    again = build_data(data_cfg(path, max_length=8), seed=1)
    assert again.splits["test"].ids == bundle.splits["test"].ids
    assert capsys.readouterr().err == warning  # the same texts, the same warning
    build_data(data_cfg(path, max_length=256), seed=1)
    assert capsys.readouterr().err == ""  # nothing to truncate, nothing said


def test_collator_pads_right_and_masks_lm_targets() -> None:
    lm = Collator("causal_lm", pad_id=0, binary=False)
    batch = lm([([5, 6, 7], None), ([8, 9], None)])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["targets"].tolist() == [[6, 7, IGNORE_INDEX], [9, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["lengths"].tolist() == [3, 2] and batch["n_tokens"] == 5
    clf = Collator("classification", pad_id=0, binary=True)([([1, 2], 1), ([3], 0)])
    assert clf["labels"].dtype == torch.float32 and clf["labels"].tolist() == [1.0, 0.0]


def test_tokenizer_round_trips_text_and_saves_for_transformers(tmp_path: Path) -> None:
    tok = TextTokenizer.train(["hello world, hello there"] * 20, vocab_size=300, min_frequency=1)
    text = "hello there world!"
    assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path)
    assert TextTokenizer.load(tmp_path).encode(text) == tok.encode(text)
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in tmp_path.iterdir()}
