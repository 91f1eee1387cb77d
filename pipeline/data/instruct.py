"""Instruction and chat data (data.task=instruct): records, as pipeline/data/reading.py reads
them from any format that holds records, in any of three spellings, into conversations (lists
of {role, content}); each checked, with the file, line (record, row) and reason of the first
bad one.

- instruction records, the teaching texts' format: {"instruction", "input" (optional),
  "output"} (names set by data.fields);
- conversations: {"messages": [{"role": system|user|assistant, "content"}, ...]};
- ShareGPT: {"conversations": [{"from": system|human|gpt, "value"}, ...]}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config.data import DataConfig
from pipeline.data.reading import Rows
from pipeline.errors import UserError

Conversation = list[dict[str, str]]
_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant"}
_SHAREGPT_ROLES["assistant"] = "assistant"


def read_conversations(path: Path, rows: Rows, cfg: DataConfig) -> list[Conversation]:
    """Each row of `path` as a conversation; the first bad one is refused, named as `rows`
    names it."""
    if not rows.rows:
        raise UserError(f"{path} holds no examples. Point data.path at a non-empty file.")
    return [_conversation(row, cfg, f"{path}, {rows.where(i)}") for i, row in enumerate(rows.rows)]


def _conversation(row: Any, cfg: DataConfig, where: str) -> Conversation:
    if not isinstance(row, dict):
        raise UserError(f"{where}: a record must be a JSON object, not {type(row).__name__}.")
    fields = cfg.fields
    if "messages" in row:
        messages = row["messages"]
        turns = [_turn(m, "role", "content", {}, where) for m in _list(messages, where)]
    elif "conversations" in row:
        turns = [
            _turn(m, "from", "value", _SHAREGPT_ROLES, where)
            for m in _list(row["conversations"], where)
        ]
    elif fields.instruction in row:
        if fields.output not in row:
            raise UserError(f"{where}: the record has no {fields.output!r} (data.fields.output).")
        # The content holds both for any template; alpaca writes them in its own sections.
        instruction = _text(row[fields.instruction], where)
        user = {"role": "user", "content": instruction, "instruction": instruction}
        if row.get(fields.input):
            user["input"] = _text(row[fields.input], where)
            user["content"] = f"{instruction}\n\n{user['input']}"
        turns = [user, {"role": "assistant", "content": _text(row[fields.output], where)}]
    else:
        raise UserError(
            f"{where}: the record has none of 'messages', 'conversations' or "
            f"{fields.instruction!r} (data.fields.instruction); its keys are "
            f"{', '.join(map(str, row)) or 'none'}."
        )
    _check_order(turns, where)
    return turns


def _list(value: Any, where: str) -> list:
    if isinstance(value, dict) and _columns_of_turns(value):
        # datasets' Sequence({"role": ..., "content": ...}) stores the turns as one list per
        # key (a struct of lists): Parquet and Arrow files written through it read so.
        value = [dict(zip(value, turn, strict=True)) for turn in zip(*value.values(), strict=True)]
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: the turns must be a non-empty list.")
    return value


def _columns_of_turns(value: dict) -> bool:
    lengths = {len(v) if isinstance(v, list) else -1 for v in value.values()}
    return len(lengths) == 1 and -1 not in lengths


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: a turn's text must be a string, not {type(value).__name__}.")
    return value


def _turn(
    message: Any, role_key: str, text_key: str, roles: dict[str, str], where: str
) -> dict[str, str]:
    if not isinstance(message, dict) or role_key not in message or text_key not in message:
        raise UserError(f"{where}: every turn needs {role_key!r} and {text_key!r}.")
    role = message[role_key]
    if isinstance(role, str):  # a list or an object cannot name a role (nor be looked up)
        role = roles.get(role, role) if roles else role
    if role not in ("system", "user", "assistant"):
        known = ", ".join(roles) if roles else "system, user, assistant"
        raise UserError(f"{where}: unknown role {message[role_key]!r}; the roles are {known}.")
    return {"role": role, "content": _text(message[text_key], where)}


def check_turns(value: Any, where: str) -> Conversation:
    """A conversation to be answered (generate's messages=): turns as training reads them,
    ending with the user's."""
    turns = [_turn(m, "role", "content", {}, where) for m in _list(value, where)]
    _check_alternation(turns, where)
    if turns[-1]["role"] != "user":
        raise UserError(f"{where}: the conversation must end with a user turn to answer.")
    return turns


def _check_order(turns: Conversation, where: str) -> None:
    """An optional system turn first, then user and assistant turns alternating, ending with
    a non-empty assistant turn."""
    _check_alternation(turns, where)
    if turns[-1]["role"] != "assistant":
        raise UserError(f"{where}: the conversation has no assistant turn at its end to learn.")
    if not all(t["content"].strip() for t in turns if t["role"] == "assistant"):
        raise UserError(f"{where}: the assistant turn is empty; there is nothing to learn.")


def _check_alternation(turns: Conversation, where: str) -> None:
    roles = [t["role"] for t in turns]
    body = roles[1:] if roles[0] == "system" else roles
    expected = ["user", "assistant"] * (len(body) // 2 + 1)
    if not body or body != expected[: len(body)]:
        raise UserError(
            f"{where}: turns out of order ({' -> '.join(roles)}). A conversation is an optional "
            "system turn, then user and assistant turns alternating."
        )
