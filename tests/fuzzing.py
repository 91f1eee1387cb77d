"""What the fuzzers share (tests/test_fuzz_*.py): how many cases they run, and what every
command-line case must leave behind, whether it trained or was refused."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings

# `make fuzz` sets FUZZ_EXAMPLES: that many new cases per fuzzer on every run, instead of the
# suite's fixed sample (the same cases everywhere, so a failure there is a failure anywhere).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 0)
_SLOW = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]


def fuzz_settings(suite_examples: int) -> settings:
    """The suite's fixed sample of `suite_examples` cases, or `make fuzz`'s new ones."""
    return settings(
        max_examples=EXAMPLES or suite_examples,
        deadline=None,
        suppress_health_check=_SLOW,
        derandomize=not EXAMPLES,
        # A failure is printed with the values to reproduce it; no example database to keep.
        database=None,
    )


def fuzz_only_settings(default_examples: int) -> settings:
    """A `make fuzz` fuzzer (it trains): new cases on every run."""
    return settings(
        max_examples=EXAMPLES or default_examples,
        deadline=None,
        suppress_health_check=_SLOW,
        derandomize=False,
        database=None,
    )


def check_outcome(code: int, stderr: str, outputs: Path) -> None:
    """A command trained (exit 0) or was refused in one paragraph (exit 2, `error: ...` last),
    with no traceback, no run left RUNNING and no half-written file."""
    tail = stderr[-3000:]
    assert "Traceback" not in stderr, tail
    assert code in (0, 2), tail
    if code == 2:
        assert stderr.strip().splitlines()[-1].startswith("error: "), tail
    assert not list(outputs.parent.rglob("*.tmp")), "a half-written file was left"
    for record in outputs.glob("runs/*/*/*/run.json"):
        assert '"status": "RUNNING"' not in record.read_text(), record
