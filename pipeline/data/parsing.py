"""Text files read as UTF-8 and JSONL parsed, each failure naming the file and line."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import UserError


def read_text(path: Path) -> str:
    """The file as UTF-8; anything else is reported with the line where decoding failed."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a byte-order mark is not part of the first column
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path}, line {line}, is not UTF-8 text (byte {data[exc.start]:#04x} at offset "
            f"{exc.start}). Convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8."
        ) from None


def parse_jsonl(path: Path, text: str) -> list[dict]:
    return [
        json_line(path, number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def json_line(path: Path, number: int, line: str) -> dict:
    """Line `number` of a JSON lines file: one object."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path}, line {number}, is not valid JSON ({exc.msg}, column {exc.colno}). "
            "Each line of a .jsonl file must hold one JSON object; fix or remove that line."
        ) from None
    if not isinstance(row, dict):
        raise UserError(
            f"{path}, line {number}, holds a JSON {type(row).__name__}, not an object. "
            'Each line must be an object such as {"text": ..., "label": ...}.'
        )
    return row
