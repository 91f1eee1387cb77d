"""The field's formats through one reader (pipeline/data/reading.py): the same records in JSONL,
a JSON array, CSV, Parquet, an Arrow file and a real `datasets` save_to_disk folder give the
same examples and the same digest; the format follows the file (its extension, else its
bytes) unless data.format names one; globs and lists concatenate in order; each bad input is
one paragraph naming the file and the fix."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipeline.config.data import DataConfig
from pipeline.data.reading import data_files, describe, detect
from pipeline.data.records import read_records
from pipeline.errors import UserError
from tests.bad_files import arrow_rows, parquet_rows, saved_dataset
from tests.helpers import app_config

LABELLED = [{"text": f"message number {i}", "label": "spam" if i % 3 else "ham"} for i in range(12)]
# Some with an input and some without: a table has the column in every row (null where a
# record had no such key), and the reader must give the records back as they were.
INSTRUCTIONS = [
    {"instruction": f"Add {i} and 1.", "output": str(i + 1)} | ({"input": "ints"} if i % 2 else {})
    for i in range(6)
]
CHATS = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"Say {i}."},
            {"role": "assistant", "content": str(i)},
        ][i % 2 :]  # with and without the system turn
    }
    for i in range(5)
]
SHAREGPT = [
    {"conversations": [{"from": "human", "value": f"Hi {i}"}, {"from": "gpt", "value": "Hello"}]}
    for i in range(4)
]
# Labels that a table stores as integers and CSV as text: both are str(value).
NUMBERED = [{"text": f"review {i}", "label": i % 3} for i in range(9)]


def write(rows: list[dict], path: Path, fmt: str) -> Path:
    """`rows` written as `fmt` at `path` (a folder for saved)."""
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows, indent=1))
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        setup = {"parquet": parquet_rows, "arrow": arrow_rows, "saved": saved_dataset}[fmt]
        setup(path.name, rows)(path.parent)
    return path


SUFFIX = {"jsonl": ".jsonl", "json": ".json", "csv": ".csv", "parquet": ".parquet"}
SUFFIX |= {"arrow": ".arrow", "saved": ""}
RECORDS = ["jsonl", "json", "parquet", "arrow", "saved"]


def config(path, task: str = "classification", **changes) -> DataConfig:
    values = {
        "name": "t",
        "task": task,
        "path": [str(p) for p in path] if isinstance(path, list) else str(path),
        "label_column": "label" if task == "classification" else None,
        "val_fraction": 0.0,
        "test_fraction": 0.0,
        "max_length": 32,
        **changes,
    }
    return DataConfig.model_validate(values)


@pytest.mark.parametrize(
    ("task", "rows", "formats"),
    [
        ("classification", LABELLED, [*RECORDS, "csv"]),
        ("classification", NUMBERED, [*RECORDS, "csv"]),
        ("instruct", INSTRUCTIONS, RECORDS),
        ("instruct", CHATS, RECORDS),
        ("instruct", SHAREGPT, RECORDS),
    ],
    ids=["labelled", "integer-labels", "instructions", "messages", "sharegpt"],
)
def test_the_same_records_in_every_format_are_the_same_examples(task, rows, formats, tmp_path):
    read = {}
    for fmt in formats:
        path = write(rows, tmp_path / f"data{SUFFIX[fmt]}", fmt)
        assert detect(path) == {"saved": "arrow"}.get(fmt, fmt)
        read[fmt] = read_records(path, config(path, task))
    first = read["jsonl"]
    assert len(first.texts) == len(rows)
    for fmt, records in read.items():
        got = (records.texts, records.labels, records.conversations)
        assert got == (first.texts, first.labels, first.conversations), fmt
        assert records.digest() == first.digest(), fmt
    if rows is NUMBERED:
        assert first.labels[:3] == ["0", "1", "2"]


def test_turns_stored_as_one_list_per_key_are_read_as_turns(tmp_path):
    """datasets' Sequence({"role", "content"}) stores a conversation's turns as a struct of
    lists; the reader gives the turns back as JSON has them."""
    import datasets

    datasets.disable_progress_bars()
    turn = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    features = datasets.Features({"messages": datasets.Sequence(turn)})
    columns = [{k: [t[k] for t in c["messages"]] for k in turn} for c in CHATS]
    saved = datasets.Dataset.from_dict({"messages": columns}, features=features)
    saved.save_to_disk(str(tmp_path / "saved"))
    jsonl = write(CHATS, tmp_path / "chats.jsonl", "jsonl")
    expected = read_records(jsonl, config(jsonl, "instruct"))
    got = read_records(tmp_path / "saved", config(tmp_path / "saved", "instruct"))
    assert got.conversations == expected.conversations
    assert got.digest() == expected.digest()


def test_the_format_follows_the_bytes_when_the_name_lies_or_says_nothing(tmp_path):
    expected = [r["text"] for r in LABELLED]
    lying = {
        "parquet.jsonl": "parquet",  # Parquet's magic number wins over the extension
        "arrow.csv": "arrow",
        "array": "json",  # no extension: a JSON array
        "lines": "jsonl",  # no extension: JSON lines
        "lines.json": "jsonl",  # a .json file of JSON lines
        "array.jsonl": "json",  # a JSON array named .jsonl
    }
    for name, fmt in lying.items():
        path = write(LABELLED, tmp_path / name, fmt)
        assert detect(path) == fmt, name
        assert read_records(path, config(path)).texts == expected, name
    # An Arrow IPC stream (what datasets writes), under a name that says nothing.
    import pyarrow as pa

    table = pa.Table.from_pylist(LABELLED)
    stream = tmp_path / "stream.bin"
    with pa.OSFile(str(stream), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    assert detect(tmp_path / "stream.bin") == "arrow"
    assert read_records(tmp_path / "stream.bin", config(tmp_path)).texts == expected
    # Neither a name nor JSON: plain text, also when a line opens with a bracket.
    corpus = tmp_path / "corpus"
    corpus.write_text("[INST] a line of text\n{braces} too\n")
    assert detect(corpus) == "text"
    assert read_records(corpus, config(corpus, "causal_lm")).texts == [
        "[INST] a line of text",
        "{braces} too",
    ]


def test_data_format_overrides_what_the_file_looks_like(tmp_path):
    sms = tmp_path / "sms.txt"
    sms.write_text("label\ttext\n" + "".join(f"{r['label']}\t{r['text']}\n" for r in LABELLED))
    assert detect(sms) == "text"
    records = read_records(sms, config(sms, format="tsv"))
    assert records.texts == [r["text"] for r in LABELLED]
    assert records.labels == [r["label"] for r in LABELLED]
    lines = read_records(sms, config(sms, "causal_lm"))  # auto: one example a line
    assert lines.texts[0] == "label\ttext"


def test_globs_and_lists_are_read_in_order(tmp_path):
    whole = [r["text"] for r in LABELLED]
    for i in range(3):
        write(LABELLED[i * 4 : i * 4 + 4], tmp_path / f"part-{i}.parquet", "parquet")
    pattern = str(tmp_path / "part-*.parquet")
    records = read_records(pattern, config(pattern))
    assert records.texts == whole
    assert records.source == pattern  # the spec, not 3 paths
    listed = [tmp_path / "part-2.parquet", tmp_path / "part-0.parquet"]
    records = read_records([str(p) for p in listed], config(listed))
    assert records.texts == whole[8:] + whole[:4]
    assert records.source == ", ".join(str(p) for p in listed)
    # ** (any depth of folders) and mixed formats, each file in its own; a save_to_disk
    # folder is one entry, not its Arrow files and its JSON.
    (tmp_path / "deep" / "er").mkdir(parents=True)
    write(LABELLED[:2], tmp_path / "deep" / "a.jsonl", "jsonl")
    write(LABELLED[2:5], tmp_path / "deep" / "er" / "b.parquet", "parquet")
    write(LABELLED[5:], tmp_path / "deep" / "er" / "c", "saved")
    deep = str(tmp_path / "deep" / "**" / "*")
    assert [p.name for p in data_files(deep)] == ["a.jsonl", "b.parquet", "c"]
    assert read_records(deep, config(deep)).texts == whole
    assert describe(pattern) == "3 files (parquet)"
    assert describe(deep) == "3 files (1 jsonl, 1 parquet, 1 arrow)"
    assert describe(tmp_path / "deep" / "a.jsonl", "text") == "1 file (text)"


def test_a_list_and_a_glob_are_config_values(tmp_path, monkeypatch):
    write(LABELLED, tmp_path / "a.jsonl", "jsonl")
    monkeypatch.chdir(tmp_path)
    overrides = ["data=jsonl", "data.path=[a.jsonl,a.jsonl]", "data.val_path=*.jsonl"]
    cfg = app_config(overrides, tmp_path).data
    assert cfg.path == [str(tmp_path / "a.jsonl")] * 2  # made absolute, as one path is
    assert cfg.val_path == str(tmp_path / "*.jsonl")  # still a glob, made absolute
    assert read_records(cfg.path, cfg).texts == [r["text"] for r in LABELLED] * 2
    with pytest.raises(UserError, match=r"data.path=.*a glob that matches one .*matches nothing"):
        config(str(tmp_path / "none-*.parquet")).check()
    with pytest.raises(UserError, match=r"data.test_path=.*nope.jsonl.*\(no such file\)"):
        config(tmp_path / "a.jsonl", test_path=[str(tmp_path / "nope.jsonl")]).check()
    with pytest.raises(UserError, match=r"data.format='csv'.*for data.task=instruct"):
        config(tmp_path / "a.jsonl", "instruct", format="csv").check()
    with pytest.raises(UserError, match=r"data.path=.*one file with data.synthetic_examples"):
        config([tmp_path / "a.jsonl"], synthetic_examples=10).check()


def test_a_json_array_given_to_the_instruct_preset_is_read(tmp_path):
    path = write(INSTRUCTIONS, tmp_path / "alpaca.json", "json")
    cfg = app_config(["data=instruct", f"data.path={path}"], tmp_path).data
    assert cfg.format == "auto"
    assert len(read_records(path, cfg).conversations) == len(INSTRUCTIONS)


def refused(path, message: str, **changes) -> str:
    """The message reading `path` gives: one paragraph naming the file and holding `message`."""
    with pytest.raises(UserError) as caught:
        read_records(path, config(path, **changes))
    text = str(caught.value)
    assert message in text, text
    assert "\n" not in text and str(path).split("*")[0] in text, text
    return text


def test_a_table_without_the_column_names_its_columns(tmp_path):
    path = write([{"sms": "a", "label": "x"}], tmp_path / "d.parquet", "parquet")
    refused(path, "has no column 'text' (data.text_column). Its columns are: sms, label. Set")
    other = write([{"text": "a", "y": "x"}], tmp_path / "e.arrow", "arrow")
    refused(other, "has no column 'label' (data.label_column). Its columns are: text, y.")
    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": None}]
    nulls = write(rows, tmp_path / "n.parquet", "parquet")
    refused(nulls, "n.parquet, row 2, has no value for column 'label'. Fix that row")


@pytest.mark.parametrize(
    ("name", "setup", "message"),
    [
        (
            "cut.parquet",
            parquet_rows("cut.parquet", LABELLED, cut=True),
            "could not be read as a Parquet file",
        ),
        (
            "cut.arrow",
            arrow_rows("cut.arrow", LABELLED, cut=True),
            "could not be read as Arrow data",
        ),
        ("cut", saved_dataset("cut", LABELLED, cut=True), "could not be read as Arrow data"),
        (
            "splits",
            saved_dataset("splits", LABELLED, ("train", "test")),
            "holds a DatasetDict (splits: test, train), not one data set. Point data.path at one split's folder",
        ),
    ],
    ids=["parquet-cut", "arrow-cut", "saved-cut", "dataset-dict"],
)
def test_damaged_tables_are_refused_naming_them(tmp_path, name, setup, message):
    setup(tmp_path)
    refused(tmp_path / name, message)


def test_bad_files_and_folders_are_refused_naming_them(tmp_path):
    refused(str(tmp_path / "none-*.jsonl"), "matches no file. Check data.path")
    refused(tmp_path / "nope.jsonl", "does not exist. Check data.path")
    for name in ("empty.parquet", "empty.jsonl", "empty.arrow"):
        (tmp_path / name).write_bytes(b"")
        refused(tmp_path / name, "is empty: it holds no examples. Point data.path at a non-empty")
    (tmp_path / "header.csv").write_text("text,label\n")
    refused(tmp_path / "header.csv", "holds no examples")
    (tmp_path / "folder").mkdir()
    refused(tmp_path / "folder", "not one written by datasets' save_to_disk (it has no state.json)")
    refused(tmp_path / "folder", "is a folder, and data.format=jsonl reads a file", format="jsonl")
    saved_dataset("state", LABELLED)(tmp_path)
    (tmp_path / "state" / "state.json").write_text("{}")
    refused(tmp_path / "state", "does not list the folder's Arrow files")
    chats = write(LABELLED, tmp_path / "chats.csv", "csv")
    refused(chats, "reads as csv, and data.task=instruct needs records", task="instruct")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("not a table at all")
    refused(garbage, "could not be read as a Parquet file")
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"data": LABELLED}, indent=1))
    refused(one, "holds one JSON object (keys data), not records")
