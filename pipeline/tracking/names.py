"""MLflow run names that say what distinguishes a run: its overrides, shortened.

The rule (docs/tracking.md): overrides of where and how a run is recorded and shown
(`hydra.*`, `paths.*`, `logger.*`, `resume`, the progress bar and log interval) are left out; a
config group's choice is its option alone (`model=gpt-tiny` -> `gpt-tiny`); any other key is
its last part (`optim.lr=3e-3` -> `lr=3e-3`), or the whole key when two overrides share that
last part (`lora.target_modules`, `sparsity.target_modules`); a path is its file name; a
number with more than 3 significant digits is rounded to 3 (`0.0012345` -> `0.00123`).
Credentials are redacted before anything is shortened, so no password survives in a name, and
a name longer than MAX_LENGTH is cut with an ellipsis.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable

from pipeline.tracking.provenance import redact

MAX_LENGTH = 80
HIDDEN = (
    "hydra",
    "paths",
    "logger",
    "resume",
    "trainer.enable_progress_bar",
    "trainer.progress_interval_s",
    "trainer.log_every_n_steps",
)


def key_of(override: str) -> str:
    """`+optim.lr=1` -> `optim.lr`; `~lora` -> `lora`; `model@x=y` -> `model@x`."""
    return override.lstrip("+~").split("=", 1)[0]


def describe(overrides: Iterable[str], groups: Collection[str]) -> str:
    """The overrides as a short, readable phrase (the module docstring's rule); '' for none."""
    kept = [redact(o) for o in overrides if not _hidden(key_of(o))]
    leaves = Counter(key_of(o).rsplit(".", 1)[-1] for o in kept)
    return " ".join(_short(o, groups, leaves) for o in kept)


def run_name(*parts: str) -> str:
    """The non-empty parts, in order, as one name of at most MAX_LENGTH characters."""
    name = " ".join(p for p in parts if p)
    return name if len(name) <= MAX_LENGTH else name[: MAX_LENGTH - 1].rstrip() + "…"


def _hidden(key: str) -> bool:
    return any(key == h or key.startswith((f"{h}.", f"{h}/", f"{h}@")) for h in HIDDEN)


def _short(override: str, groups: Collection[str], leaves: Counter[str]) -> str:
    if override.startswith("~"):  # a deletion: rare enough to show whole
        return override
    key, value = key_of(override), _value(override.split("=", 1)[1])
    if key.split("@")[0] in groups:
        return value
    leaf = key.rsplit(".", 1)[-1]
    return f"{leaf if leaves[leaf] == 1 else key}={value}"


def _value(value: str) -> str:
    value = value.strip("'\"")
    if "/" in value and "://" not in value:
        return value.rstrip("/").rsplit("/", 1)[-1] or value
    try:
        number = float(value)
    except ValueError:
        return value
    rounded = f"{number:.3g}"
    return value if float(rounded) == number else rounded
