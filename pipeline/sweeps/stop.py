"""Stopping a sweep in order. A signal (Ctrl-C, SIGTERM) stops the trials that are running,
each with its checkpoint saved and its run KILLED; no other trial starts; and the sweep still
ends: its summary is written and its MLflow parent run ends KILLED. This holds whether the
trials run one after another in the sweep's process or side by side in worker processes
(hydra/launcher=local), where a terminal's Ctrl-C reaches every process but `kill <pid>` only
the sweep's.

One file in the sweep folder carries the stop to every process: whichever process takes the
signal first writes it; running trials look for it after each step, a trial about to start
does not start, and the sweep's end reads it.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from pipeline.files import write_text

MARKER = ".stopped"
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def marker_in(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / MARKER


def request_stop(path: Path, signum: int) -> None:
    if not path.exists():
        write_text(path, signal.Signals(signum).name)


def stop_signal(path: Path | None) -> int | None:
    """The signal that stopped the sweep, or None while it goes on."""
    try:
        return signal.Signals[path.read_text().strip()].value if path else None
    except (OSError, KeyError):
        return None


def install(path: Path) -> None:
    """In a sweep's process and its trial workers, outside a trial's training (which handles
    signals itself, see faults.StopOnSignal): a first signal stops the sweep in order, a second
    ends this process at once."""

    taken: list[int] = []  # by this process: the stop file may come from another one

    def handle(signum: int, frame: Any) -> None:
        if not taken:
            taken.append(signum)
            request_stop(path, signum)
            return
        for s in SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        signal.raise_signal(signum)

    for s in SIGNALS:
        signal.signal(s, handle)
