"""The field's formats through one reader: the same records in JSONL, a JSON array, CSV,
Parquet, an Arrow file and a real `datasets` save_to_disk folder give the same examples and
the same digest; the format follows the file; globs and lists concatenate in order; each bad
input is one paragraph naming the file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config.data import DataConfig
from pipeline.data.records import read_records
from pipeline.data.tokenizer import TextTokenizer
from pipeline.errors import UserError
from tests.helpers import app_config

LABELLED = [{"text": f"message number {i}", "label": "spam" if i % 3 else "ham"} for i in range(12)]
INSTRUCTIONS = [
    {"instruction": f"Add {i} and 1.", "input": "", "output": str(i + 1)} for i in range(6)
]
CHATS = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"Say {i}."},
            {"role": "assistant", "content": str(i)},
        ]
    }
    for i in range(5)
]


def write(rows: list[dict], path: Path, fmt: str) -> Path:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows, indent=1))
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "arrow":
        table = pa.Table.from_pylist(rows)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    elif fmt == "saved":
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


EXTENSIONS = {"jsonl": ".jsonl", "json": ".json", "csv": ".csv", "parquet": ".parquet"}
EXTENSIONS |= {"arrow": ".arrow", "saved": ""}


def config(path, task: str = "classification", **changes) -> DataConfig:
    values = {
        "name": "t",
        "task": task,
        "path": path if isinstance(path, list) else str(path),
        "label_column": "label" if task == "classification" else None,
        "val_fraction": 0.0,
        "test_fraction": 0.0,
        "max_length": 32,
        **changes,
    }
    return DataConfig.model_validate(values)


@pytest.mark.parametrize(
    "task,rows,formats",
    [
        ("classification", LABELLED, ["jsonl", "json", "csv", "parquet", "arrow", "saved"]),
        ("instruct", INSTRUCTIONS, ["jsonl", "json", "parquet", "arrow", "saved"]),
        ("instruct", CHATS, ["jsonl", "json", "parquet", "arrow", "saved"]),
    ],
    ids=["labelled", "instructions", "chats"],
)
def test_the_same_records_in_every_format_are_the_same_examples(task, rows, formats, tmp_path):
    read = {}
    for fmt in formats:
        path = write(rows, tmp_path / f"data{EXTENSIONS[fmt]}", fmt)
        read[fmt] = read_records(path, config(path, task))
    first = read["jsonl"]
    for fmt, records in read.items():
        assert (records.texts, records.labels, records.conversations) == (
            first.texts,
            first.labels,
            first.conversations,
        ), fmt
        assert records.digest() == first.digest(), fmt
    if task == "instruct":
        assert first.conversations[0][-1]["role"] == "assistant"


def test_the_format_follows_the_content_when_the_name_says_nothing(tmp_path):
    parquet = write(LABELLED, tmp_path / "data.bin", "parquet")
    array = write(LABELLED, tmp_path / "export", "json")
    lines = write(LABELLED, tmp_path / "records.json", "jsonl")  # JSON lines named .json
    expected = read_records(write(LABELLED, tmp_path / "d.jsonl", "jsonl"), config(lines)).texts
    for path in (parquet, array, lines):
        assert read_records(path, config(path)).texts == expected, path
    # data.format says otherwise: a .txt file that holds tab-separated columns.
    tsv = tmp_path / "sms.txt"
    tsv.write_text("label\ttext\n" + "".join(f"{r['label']}\t{r['text']}\n" for r in LABELLED))
    assert read_records(tsv, config(tsv, format="tsv")).texts == expected
    assert read_records(tsv, config(tsv, task="causal_lm"))  # auto: plain text lines


def test_globs_and_lists_are_read_in_order(tmp_path):
    for i in range(3):
        write(LABELLED[i * 4 : i * 4 + 4], tmp_path / f"part-{i}.parquet", "parquet")
    whole = [r["text"] for r in LABELLED]
    assert read_records(str(tmp_path / "part-*.parquet"), config(tmp_path)).texts == whole
    listed = [str(tmp_path / "part-2.parquet"), str(tmp_path / "part-0.parquet")]
    assert read_records(listed, config(listed)).texts == whole[8:] + whole[:4]


def test_a_json_array_given_to_the_instruct_preset_is_read(tmp_path):
    path = write(INSTRUCTIONS, tmp_path / "alpaca.json", "json")
    cfg = app_config(["data=instruct", f"data.path={path}"], tmp_path).data
    assert cfg.format == "auto"
    assert len(read_records(path, cfg).conversations) == len(INSTRUCTIONS)


def test_the_formats_train_the_same_tokens(tmp_path):
    from pipeline.data.preparation import build_data

    tokenizer = TextTokenizer.train([r["text"] for r in LABELLED], 300, 1)
    bundles = [
        build_data(config(write(LABELLED, tmp_path / f"d{EXTENSIONS[f]}", f)), 0, tokenizer)
        for f in ("jsonl", "parquet", "saved")
    ]
    assert bundles[0].splits["train"].ids == bundles[1].splits["train"].ids
    assert bundles[0].splits["train"].ids == bundles[2].splits["train"].ids
    assert bundles[0].sources["train"].digest == bundles[2].sources["train"].digest


def refused(path, message: str, **changes) -> None:
    with pytest.raises(UserError) as caught:
        read_records(path, config(path, **changes))
    text = str(caught.value)
    assert message in text and "\n" not in text, text


def test_bad_files_are_refused_naming_them(tmp_path):
    no_label = write([{"text": "a"}], tmp_path / "no_label.parquet", "parquet")
    refused(
        no_label, f"{no_label} has no column 'label' (data.label_column). Its columns are: text"
    )
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(write(LABELLED, tmp_path / "ok.parquet", "parquet").read_bytes()[:200])
    refused(broken, f"{broken} could not be read as a Parquet file")
    arrow = tmp_path / "broken.arrow"
    arrow.write_bytes(b"ARROW1\x00\x00garbage")
    refused(arrow, f"{arrow} could not be read as Arrow data")
    refused(str(tmp_path / "none-*.jsonl"), "matches no file")
    import datasets

    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(LABELLED)})
    splits.save_to_disk(str(tmp_path / "dict"))
    refused(tmp_path / "dict", "holds a DatasetDict (splits train)")
    (tmp_path / "folder").mkdir()
    refused(tmp_path / "folder", "not one written by datasets' save_to_disk")
    csv_chats = write(LABELLED, tmp_path / "chats.csv", "csv")
    refused(csv_chats, "reads as csv, and data.task=instruct needs records", task="instruct")
    null_label = write([{"text": "a", "label": None}], tmp_path / "null.parquet", "parquet")
    refused(null_label, f"{null_label}, row 1, has no value for column 'label'")


def test_a_glob_matching_nothing_is_a_config_error(tmp_path):
    with pytest.raises(UserError, match=r"data\.path=.* a glob that matches at least one file"):
        config(str(tmp_path / "*.parquet")).check()
