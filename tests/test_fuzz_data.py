"""Property-based fuzzing of data files (Hypothesis): TSV, CSV, JSONL and text files in other
encodings, with stray delimiters and quotes, empty and huge fields, JSON values of the wrong
type, mixed line endings, missing columns, cut short or empty, and instruction data (JSON and
JSONL conversations in three spellings, turns of the wrong type), fed to the data loading path
(pipeline/data/: reading, splitting, the tokenizer, token ids). Each file loads or is refused
with a UserError of one paragraph that names the file; any other exception would reach the user
as a traceback.

The suite runs a fixed sample through the library functions; `make fuzz` runs new files through
the command line, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config.train import TrainConfig
from pipeline.data.preparation import build_data
from pipeline.errors import UserError
from tests.fuzzing import check_outcome, fuzz_only_settings, fuzz_settings
from tests.helpers import TINY, app_config

FORMATS = {"tsv": "\t", "csv": ",", "jsonl": None, "text": None, "json": None}
ENCODINGS = ["utf-8", "utf-8-sig", "latin-1", "cp1252", "utf-16", "utf-16-le"]
# Fields that break naive readers: quotes, delimiters, NUL, a BOM, JSON-looking text, a field
# beyond csv's 128 KiB limit, whitespace only.
NASTY = ['"', '""', '"a', 'a"b', "\t", ",", "\x00", "\ufeff", "{", "null", "é€", " ", ""]
# Beyond csv's field limit (128 KiB); words, so that training the tokenizer on it stays quick.
HUGE = "cash " * 28_000
CELLS = st.one_of(
    st.text(max_size=30),
    st.sampled_from([*NASTY, HUGE]),
    st.sampled_from(["win cash now", "see you at noon", "call me"]),
)
# What a JSON line may hold instead of a string: the wrong types.
JSON_VALUES = st.one_of(
    CELLS, st.integers(), st.floats(allow_nan=True), st.none(), st.booleans(), st.lists(CELLS)
)
HEADERS = ["text{d}label", "label{d}text", "text", "sms{d}label", "text{d}label{d}extra", ""]


# Instruction data in its three spellings; now and then one turn or field of the wrong type.
ROLES = st.sampled_from(["system", "user", "human", "gpt", "bot", 3, None, ["user"], {"a": 1}])
SPELLINGS = {"messages": ("role", "content", ["user", "assistant"])}
SPELLINGS["conversations"] = ("from", "value", ["human", "gpt"])


@st.composite
def records(draw: st.DrawFn) -> object:
    spelling = draw(st.sampled_from(["messages", "conversations", "instruction", "junk"]))
    damaged = draw(st.integers(0, 3)) == 0
    if spelling == "junk":
        return draw(JSON_VALUES)
    if spelling == "instruction":
        record = {"instruction": draw(CELLS), "input": draw(CELLS), "output": draw(CELLS)}
        if damaged:
            key = draw(st.sampled_from(sorted(record)))
            record[key] = draw(JSON_VALUES)
        return record
    role_key, text_key, roles = SPELLINGS[spelling]
    turns: list = [
        {role_key: roles[i % 2], text_key: draw(CELLS)} for i in range(draw(st.integers(1, 4)))
    ]
    if damaged:
        turn = turns[draw(st.integers(0, len(turns) - 1))]
        turn[draw(st.sampled_from([role_key, text_key]))] = draw(st.one_of(ROLES, JSON_VALUES))
    return {spelling: turns}


@st.composite
def data_files(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(format, task, the file's bytes)."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    if fmt in ("jsonl", "json") and draw(st.booleans()):
        rows = draw(st.lists(records(), max_size=20))
        if fmt == "json":
            content = json.dumps(rows)
        else:
            content = "".join(json.dumps(r) + draw(st.sampled_from(["\n", "\r\n"])) for r in rows)
        return fmt, "instruct", content.encode()
    if fmt == "json":  # an array of records is for instruction data only
        fmt = "jsonl"
    task = "causal_lm" if fmt == "text" else draw(st.sampled_from(["classification", "causal_lm"]))
    rows = draw(st.lists(st.tuples(CELLS, st.sampled_from(["spam", "ham", "", "1"])), max_size=40))
    if fmt == "jsonl":
        lines = [_json_line(draw, text, label) for text, label in rows]
    elif fmt == "text":
        lines = [text for text, _ in rows]
    else:
        # Mostly the right delimiter, sometimes the other one or a stray quote.
        d = draw(st.sampled_from([FORMATS[fmt]] * 4 + ["\t", ",", ";"]))
        header = draw(st.sampled_from(HEADERS)).format(d=d)
        quote = draw(st.sampled_from(["", "", '"']))
        lines = [header, *(f"{quote}{text}{quote}{d}{label}" for text, label in rows)]
    endings = st.sampled_from(["\n", "\r\n", "\r"])
    mixed = draw(st.booleans())
    ending = draw(endings)
    content = "".join(line + (draw(endings) if mixed else ending) for line in lines)
    data = content.encode(draw(st.sampled_from(ENCODINGS)), errors="replace")
    if draw(st.integers(0, 4)) == 0:  # cut short, possibly inside a character
        data = data[: draw(st.integers(0, len(data)))]
    return fmt, task, data


def _json_line(draw: st.DrawFn, text: str, label: str) -> str:
    shape = draw(st.integers(0, 9))
    if shape == 0:
        return draw(st.sampled_from(['{"text": ', "[1, 2]", '"just a string"', "", "{}"]))
    row = {"text": draw(JSON_VALUES) if shape == 1 else text, "label": label}
    if shape == 2:
        row["label"] = draw(JSON_VALUES)
    if shape == 3:
        del row[draw(st.sampled_from(["text", "label"]))]
    return json.dumps(row, ensure_ascii=draw(st.booleans()))


class Configs(dict):
    def __repr__(self) -> str:  # Hypothesis prints the arguments of a failing case
        return "<a config per format and task>"


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> Configs:
    """One validated config per (format, task), composed once: Hydra takes a while."""
    outputs = tmp_path_factory.mktemp("data-fuzz")
    placeholder = outputs / "placeholder"
    placeholder.write_text("text\tlabel\n")
    configs = Configs()
    for fmt in ("tsv", "csv", "jsonl", "text"):
        task = "causal_lm" if fmt == "text" else "classification"
        args = [*TINY, f"data={fmt}", f"data.path={placeholder}", f"data.task={task}"]
        args += ["data.synthetic_examples=null", "data.max_length=64"]
        if task == "causal_lm":
            args.append("data.label_column=null")
        configs[fmt, task] = cfg = app_config(args, outputs)
        lm = cfg.data.model_copy(update={"task": "causal_lm", "label_column": None})
        configs[fmt, "causal_lm"] = cfg.model_copy(update={"data": lm})
    args = [*TINY, "data=instruct", f"data.path={placeholder}", "data.max_length=64"]
    args.append("data.synthetic_examples=null")
    for fmt in ("jsonl", "json"):
        configs[fmt, "instruct"] = app_config([*args, f"data.format={fmt}"], outputs)
    return configs


def load_or_refuse(cfg: TrainConfig, path: Path) -> None:
    """The data loading path on `path`: loads, or raises a UserError naming the file."""
    data = cfg.data.model_copy(update={"path": str(path)})
    assert not data.synthetic_examples, "the demo data would overwrite the fuzzed file"
    try:
        build_data(data, cfg.seed)
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message.strip(), message
        assert path.name in message, f"the error does not name the file: {message}"


@fuzz_settings(suite_examples=150)
@given(case=data_files())
def test_a_malformed_data_file_loads_or_is_refused_naming_the_file(
    configs, tmp_path_factory, case
) -> None:
    fmt, task, data = case
    path = tmp_path_factory.mktemp("file") / f"data.{fmt}"
    path.write_bytes(data)
    load_or_refuse(configs[fmt, task], path)


@pytest.mark.fuzz
@fuzz_only_settings(default_examples=40)
@given(case=data_files())
def test_a_malformed_data_file_trains_or_is_refused_on_the_command_line(
    tmp_path_factory, capsys, case
) -> None:
    """End to end: `python -m pipeline.train data=<format> data.path=<file>`."""
    from tests.test_bad_input import run_train

    fmt, task, data = case
    folder = tmp_path_factory.mktemp("file")
    path = folder / f"data.{fmt}"
    path.write_bytes(data)
    outputs = folder / "outputs"
    preset = ["data=instruct", f"data.format={fmt}"] if task == "instruct" else [f"data={fmt}"]
    args = [f"paths.outputs={outputs}", *TINY, "trainer.max_epochs=1", *preset]
    args += [f"data.path={path}", f"data.task={task}", "data.synthetic_examples=null"]
    args.append("data.max_length=64")
    if task == "causal_lm":
        args.append("data.label_column=null")
    code, stderr = run_train(args, capsys)
    check_outcome(code, stderr, outputs)
