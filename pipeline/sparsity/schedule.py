"""When masks change, counted in optimizer steps (never micro-batches).

Step 0 is before the first optimizer step; step t is right after the t-th.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.config.sparsity import SparsityConfig
from pipeline.errors import UserError


def resolve_step(step: int | float, total: int) -> int:
    """A step count as given, or a fraction of the run's `total` optimizer steps."""
    return round(step * total) if isinstance(step, float) else step


@dataclass(frozen=True)
class Schedule:
    cfg: SparsityConfig
    start: int
    end: int
    stages: dict[int, float]

    @classmethod
    def for_run(cls, cfg: SparsityConfig, total_steps: int) -> Schedule:
        start, end = (resolve_step(s, total_steps) for s in (cfg.start_step, cfg.end_step))
        stages = {resolve_step(s, total_steps): level for s, level in cfg.stages}
        last = max([start, *stages])
        if cfg.schedule == "gradual" or cfg.method == "rigl":
            last = max(last, end)
        if last > total_steps:
            raise UserError(
                f"The sparsity schedule ends at optimizer step {last}, but this run takes "
                f"{total_steps} (gradient accumulation counted). Lower sparsity.end_step / "
                "start_step / stages, give them as fractions of the run (e.g. 0.8), or train longer."
            )
        return cls(cfg, start, end, stages)

    def gradual(self, step: int) -> float:
        """Zhu & Gupta's cubic: initial at start, final at end, flat after."""
        c = self.cfg
        progress = min(1.0, max(0.0, (step - self.start) / (self.end - self.start)))
        return c.final + (c.initial - c.final) * (1.0 - progress) ** 3

    def target(self, step: int) -> float | None:
        """The sparsity the masks take at `step`, or None when they do not change there."""
        c = self.cfg
        if c.method == "none":
            return None
        if c.schedule == "staged":
            return self.stages.get(step)
        if c.schedule == "gradual" and c.method != "rigl":
            on_grid = (step - self.start) % c.frequency == 0 or step == self.end
            return self.gradual(step) if self.start <= step <= self.end and on_grid else None
        return self.level if step == self.start else None

    @property
    def level(self) -> float:
        """The final sparsity: N:M patterns imply theirs."""
        nm = self.cfg.nm
        return 1.0 - nm[0] / nm[1] if nm else self.cfg.final

    def regrowth(self, step: int) -> float | None:
        """RigL's drop fraction at `step` (cosine-decayed), or None when no update is due."""
        c = self.cfg
        if c.method != "rigl" or not self.start < step < self.end:
            return None
        if (step - self.start) % c.frequency:
            return None
        progress = (step - self.start) / (self.end - self.start)
        return c.drop_fraction / 2 * (1 + math.cos(math.pi * progress))
