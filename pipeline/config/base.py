"""What every group's schema shares: unknown keys are errors, fields document themselves, and a
rule that fails names the key, the value and what is allowed."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict

from pipeline.errors import UserError

SIZE_PATTERN = r"^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?$"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}
_UNITS.update(KiB=2**10, MiB=2**20, GiB=2**30)


def _absolute(path: str) -> str:
    """~ expanded and made absolute against the directory the command ran in, so that what a
    run records still points at the file when it is read from elsewhere (evaluate, resume)."""
    return os.path.abspath(os.path.expanduser(path)) if path else path


# A file or folder on this machine, recorded as an absolute path.
LocalPath = Annotated[str, AfterValidator(_absolute)]


class Group(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default. The docstring
    # under a field is its description in docs/config-reference.md.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


def fail(key: str, value: Any, allowed: str) -> UserError:
    return UserError(
        f"Config error: {key}={value!r} is not allowed: {allowed}. "
        f"Fix it on the command line ({key}=...) or in its YAML file under conf/."
    )


def parse_size(text: str) -> int:
    """'500MB' -> 500_000_000 (decimal units as transformers uses; KiB/MiB/GiB binary)."""
    match = re.match(SIZE_PATTERN, text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    return int(float(match[1]) * _UNITS[match[2] or ""])
