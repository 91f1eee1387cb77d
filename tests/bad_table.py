"""What a row of the bad-input table (tests/test_bad_input.py) is made of: the command line, the
message it must end with, and the files it writes first."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

TSV_ROWS = [f"message number {i} {'win cash' if i % 3 else 'see you'}" for i in range(60)]


def tsv(rows: list[tuple[str, str]], header: str = "text\tlabel") -> str:
    return "\n".join([header, *(f"{a}\t{b}" for a, b in rows)]) + "\n"


def demo_rows() -> list[tuple[str, str]]:
    return [(text, "spam" if i % 3 else "ham") for i, text in enumerate(TSV_ROWS)]


def write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


@dataclass
class Case:
    args: str  # overrides; {tmp} is the test's folder
    expect: str  # a regular expression the message must match
    setup: Callable[[Path], None] | None = None
    during_training: bool = False  # a FAILED run is left; else no run at all
    exit_code: int = 2  # 1: refused by Hydra itself (its own message)
    marks: list = field(default_factory=list)
    command: str = "train"  # python -m pipeline.<command>
    env: dict[str, str] = field(default_factory=dict)  # set in the environment for the row


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
