"""What a communication hook sent since it was last asked, against the dense gradient."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Traffic:
    sent: int = 0  # bytes this rank handed to the collectives
    dense: int = 0  # bytes an uncompressed all-reduce of the same buckets hands over

    def add(self, sent: int, dense: int) -> None:
        self.sent += sent
        self.dense += dense

    def take(self) -> tuple[int, int]:
        """The counts so far, and start again from zero."""
        counts = self.sent, self.dense
        self.sent = self.dense = 0
        return counts
