"""Plain progress lines for output that is not a terminal (nohup, a SLURM log, CI), where a
progress bar draws nothing: one line every `interval_s` seconds, as Lightning's and
transformers' loggers print in batch jobs.

    step 120/1000 (12%) | epoch 1/4 | loss 0.4123 | 2,345 tokens/s | elapsed 1:02 | ETA 8:10
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def clock(seconds: float) -> str:
    """h:mm:ss, or m:ss under an hour."""
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m}:{s:02d}"


class ProgressLines:
    def __init__(
        self,
        what: str,
        total: int | None,
        interval_s: float,
        done: int = 0,
        stream: TextIO | None = None,
    ):
        """`what`: the counted unit (step, answer); `total`: how many there will be, if known;
        `done`: how many were done before (a resumed run's step)."""
        self.what, self.total, self.interval_s = what, total, interval_s
        self.stream = stream
        self.start = self._last = time.monotonic()
        # A resumed run starts counting at its step: the rate is of this process's units.
        self._first_done = done

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.interval_s

    def update(self, done: int, fields: list[str] | None = None, force: bool = False) -> None:
        """Print the line for `done` units, with `fields` (`epoch 1/4`, `2,345 tokens/s`), if
        the interval has passed (or `force`)."""
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        elapsed = now - self.start
        parts = [f"{self.what} {done:,}"]
        if self.total:
            parts[0] += f"/{self.total:,} ({done / self.total:.0%})"
        parts += fields or []
        parts.append(f"elapsed {clock(elapsed)}")
        rate = (done - self._first_done) / elapsed if elapsed > 0 else 0.0
        if self.total and rate > 0:
            parts.append(f"ETA {clock(max(self.total - done, 0) / rate)}")
        print(" | ".join(parts), file=self.stream or sys.stdout, flush=True)
