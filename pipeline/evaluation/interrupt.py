"""SIGTERM and Ctrl-C during an evaluation: the work in hand finishes, what is done is kept,
and the command stops with 128 + the signal's number and a message (as training does), instead
of dying silently or exiting 0 with nothing written."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from pipeline.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal:
    """While entered, the first SIGTERM or SIGINT is noted, for `check` to raise between two
    pieces of work; a second one raises at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise self.error("at once")
        self.signum = signum

    def check(self, done: str) -> None:
        """Raise Interrupted if a signal came; `done`: what was finished when it did."""
        if self.signum is not None:
            raise self.error(done)

    def error(self, done: str) -> Interrupted:
        name = signal.Signals(self.signum or signal.SIGTERM).name
        return Interrupted(f"evaluate stopped by {name} ({done}).", self.signum or signal.SIGTERM)
