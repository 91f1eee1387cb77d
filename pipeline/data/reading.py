"""Data files into rows, in the formats the field keeps data in: JSON lines, a JSON array,
CSV, TSV, plain text, Parquet (what the Hugging Face Hub publishes data sets as), Arrow IPC
files and `datasets.Dataset.save_to_disk` folders. The format follows each file (its
extension, else its first bytes) unless data.format names one; a spec is one path, a glob, or
a list of either. Every failure names the file, and the line, record or row where there is one.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.data.parsing import parse_jsonl, read_text
from pipeline.errors import UserError

FORMATS = ("tsv", "csv", "jsonl", "json", "text", "parquet", "arrow")
_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".txt": "text",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
}
_JSON_EXTENSIONS = (".json", ".jsonl", ".ndjson")
_GLOB = set("*?[")
# An Arrow IPC stream starts with a message's continuation marker (format 0.15 and later).
_ARROW_STREAM = b"\xff\xff\xff\xff"

Spec = str | Path | Sequence[str | Path]


def is_glob(entry: str | Path) -> bool:
    return bool(_GLOB & set(str(entry)))


def _entries(spec: Spec) -> list[str]:
    return [str(spec)] if isinstance(spec, str | Path) else [str(e) for e in spec]


def data_files(spec: Spec) -> list[Path]:
    """The files a data.path (or val_path, test_path) names, in order: the entries as given,
    each glob expanded in sorted order (`**` reaches into subfolders)."""
    files: list[Path] = []
    for entry in _entries(spec):
        if not is_glob(entry):
            if not os.path.exists(entry):
                raise UserError(f"Data file {entry} does not exist. Check data.path.")
            files.append(Path(entry))
            continue
        matched = _matches(entry)
        if not matched:
            raise UserError(
                f"The pattern {entry} matches no file. Check data.path: a path, a glob such as "
                "data/*.jsonl (** for any depth of folders), or a list of them."
            )
        files += matched
    return files


def _matches(pattern: str) -> list[Path]:
    """A glob's files, sorted. A folder it matches is data only when datasets wrote it
    (`data/**` matches every folder on the way), and then it is one entry, not its files."""
    found = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
    saved = [p for p in found if (p / "state.json").is_file()]
    return [
        p for p in found if (p.is_file() or p in saved) and not any(s in p.parents for s in saved)
    ]


def spec_name(spec: Spec) -> str:
    """How a split's source is recorded: the file, the glob or the list's entries, absolute."""
    return ", ".join(
        os.path.abspath(e) if is_glob(e) else str(Path(e).resolve()) for e in _entries(spec)
    )


def detect(path: Path, configured: str = "auto") -> str:
    """The file's format: data.format when it names one, else the file's magic bytes (Parquet,
    Arrow), else its extension, else its first bytes (JSON), else text."""
    if configured != "auto":
        return configured
    if path.is_dir():
        return "arrow"  # a save_to_disk folder; _saved_dataset says what else it may be
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ARROW1") or head.startswith(_ARROW_STREAM):
        return "arrow"
    suffix = path.suffix.lower()
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if suffix in _JSON_EXTENSIONS:
        # A JSON line must be an object: a `[` opens one array, whatever the name says.
        if first[:1] == b"[":
            return "json"
        if first[:1] == b"{":
            return "jsonl"
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    # No known extension: JSON only when it looks like records, so a text corpus whose first
    # line opens with a bracket stays text.
    if first.startswith(b"{") and first[1:].lstrip()[:1] in (b'"', b"}"):
        return "jsonl"
    if first.startswith(b"[") and first[1:].lstrip()[:1] in (b"{", b"]"):
        return "json"
    return "text"


@dataclass
class Rows:
    """A file's rows (dicts, as JSON would give them), and how to name row i in a message."""

    rows: list[Any]
    kind: str  # line, record or row
    numbers: list[int]  # row i is `kind numbers[i]`, 1-based as an editor counts
    fmt: str = "jsonl"
    columns: list[str] | None = None  # Parquet and Arrow: the schema's, even without rows

    def where(self, i: int) -> str:
        return f"{self.kind} {self.numbers[i]}"

    def column_names(self) -> list[str]:
        if self.columns is not None:
            return self.columns
        return (
            [str(c) for c in self.rows[0]] if self.rows and isinstance(self.rows[0], dict) else []
        )


def read_rows(path: Path, fmt: str, text_key: str = "text") -> Rows:
    """The rows of one file (or save_to_disk folder) in format `fmt`; a text file's lines are
    rows of one column, `text_key`. A file without rows is refused."""
    if path.is_dir() and fmt not in ("parquet", "arrow"):
        raise UserError(
            f"{path} is a folder, and data.format={fmt} reads a file. Point data.path at the "
            "files (a glob such as folder/*.jsonl), or set data.format=auto or arrow for a "
            "folder written by datasets' save_to_disk."
        )
    if path.is_file() and path.stat().st_size == 0:
        raise UserError(
            f"{path} is empty: it holds no examples. Point data.path at a non-empty file."
        )
    rows = _columnar(path, fmt) if fmt in ("parquet", "arrow") else _textual(path, fmt, text_key)
    if not rows.rows:
        raise UserError(f"{path} holds no examples. Point data.path at a non-empty file.")
    return rows


def _textual(path: Path, fmt: str, text_key: str) -> Rows:
    text = read_text(path)
    if not text.strip():
        return Rows([], "line", [], fmt)
    if fmt == "text":
        lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]
        kept = [(n, line) for n, line in lines if line]
        return Rows([{text_key: line} for _, line in kept], "line", [n for n, _ in kept], fmt)
    if fmt == "json":
        return _json_array(path, text)
    if fmt == "jsonl":
        numbers = [n for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
        return Rows(_json_lines(path, text), "line", numbers, fmt)
    try:
        delimiter = "\t" if fmt == "tsv" else ","
        rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as exc:
        raise UserError(
            f"Could not read {path} as {fmt} ({exc}). Check data.format ({', '.join(FORMATS)}, "
            "or auto)."
        ) from None
    return Rows(rows, "row", list(range(2, len(rows) + 2)), fmt)  # row 1 is the header


def _json_array(path: Path, text: str) -> Rows:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}). data.format=json "
            "reads one JSON array of records; use data.format=jsonl for one record a line."
        ) from None
    if not isinstance(data, list):
        raise UserError(
            f"{path} holds a JSON {type(data).__name__}, not an array of records. Write the "
            "records as one JSON array, or one object a line (JSON lines, data.format=jsonl)."
        )
    return Rows(data, "record", list(range(1, len(data) + 1)), "json")


def _json_lines(path: Path, text: str) -> list[dict]:
    try:
        return parse_jsonl(path, text)
    except UserError:
        # A .json file holding one object written over several lines is not JSON lines.
        if path.suffix.lower() == ".json":
            try:
                whole = json.loads(text)
            except json.JSONDecodeError:
                whole = None
            if isinstance(whole, dict):
                raise UserError(
                    f"{path} holds one JSON object (keys {', '.join(map(str, whole)) or 'none'}), "
                    "not records. Write the records as one JSON array, or one object a line "
                    "(JSON lines)."
                ) from None
        raise


def _columnar(path: Path, fmt: str) -> Rows:
    """Parquet or Arrow as Python values, nested columns (a `messages` list of structs) as
    lists of dicts, so that the records are those of the JSON the table was made from."""
    import pyarrow as pa

    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif path.is_dir():
            table = _saved_dataset(path)
        else:
            table = _arrow_file(path)
        rows = table.to_pylist()
    except (pa.ArrowException, OSError, ValueError) as exc:
        what = "a Parquet file" if fmt == "parquet" else "Arrow data"
        raise UserError(
            f"{path} could not be read as {what} ({str(exc).splitlines()[0]}). It is damaged "
            "or cut short, or holds another format: write it again, or set data.format to "
            "what it holds."
        ) from None
    numbers = list(range(1, len(rows) + 1))
    return Rows([_without_nulls(row) for row in rows], "row", numbers, fmt, table.column_names)


def _without_nulls(value: Any) -> Any:
    """A table has every column in every row, null where a JSON record had no such key: the
    keys are dropped again (a record with `messages` null is not a conversation)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _arrow_file(path: Path) -> Any:
    """An Arrow IPC file, or an IPC stream (what datasets writes)."""
    import pyarrow as pa

    with open(path, "rb") as f:
        streamed = f.read(4) == _ARROW_STREAM
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_stream(source) if streamed else pa.ipc.open_file(source)
        return reader.read_all()


def _saved_dataset(folder: Path) -> Any:
    """A `datasets.Dataset.save_to_disk` folder: its Arrow stream files, in state.json's order."""
    import pyarrow as pa

    if (folder / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in folder.iterdir() if (p / "state.json").is_file())
        example = folder / (splits or ["train"])[0]
        raise UserError(
            f"{folder} holds a DatasetDict (splits: {', '.join(splits) or 'none'}), not one "
            f"data set. Point data.path at one split's folder, e.g. data.path={example}, and "
            "data.val_path / data.test_path at the others."
        )
    state = folder / "state.json"
    if not state.is_file():
        raise UserError(
            f"{folder} is a folder, not one written by datasets' save_to_disk (it has no "
            "state.json). Point data.path at a file, a glob of files such as "
            f"{folder}/*.parquet, or a save_to_disk folder."
        )
    try:
        names = [entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]
    except (ValueError, KeyError, TypeError):
        raise UserError(
            f"{state} does not list the folder's Arrow files (_data_files): it is damaged or "
            "not datasets' own. Save the data set again with save_to_disk."
        ) from None
    return pa.concat_tables([_arrow_file(folder / name) for name in names])


def describe(spec: Spec, configured: str = "auto") -> str:
    """What a spec reads, for the run's summary: '3 files (parquet)', '1 file (jsonl)'."""
    files = data_files(spec)
    formats = Counter(detect(path, configured) for path in files)
    kinds = ", ".join(f"{n} {fmt}" if len(formats) > 1 else fmt for fmt, n in formats.items())
    return f"{len(files)} file{'s' if len(files) != 1 else ''} ({kinds})"
