"""conf/lora/: PEFT LoRA (and DoRA) adapters; name=none trains every weight."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from pipeline.config.base import Group, fail


class LoraConfig(Group):
    name: str
    """The preset's name (none, default, all_linear, dora)."""
    r: int = Field(default=8, gt=0)
    """The adapters' rank."""
    alpha: float = Field(default=16.0, gt=0.0)
    """The update is scaled by alpha / r (alpha / sqrt(r) with use_rslora)."""
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout on the adapters' input."""
    target_modules: str | list[str] = "attention"
    """attention: the attention projections of whatever architecture; all-linear: every Linear
    layer but the output head; or a list of regular expressions searched in module names (e.g.
    [W_query, W_value] or ["trf_blocks\\\\.(10|11)\\\\..*fc1"])."""
    use_rslora: bool = False
    """Scale by alpha / sqrt(r) instead of alpha / r (rsLoRA)."""
    use_dora: bool = False
    """Weight-decomposed adapters (DoRA)."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases train."""
    modules_to_save: list[str] | None = None
    """Modules trained fully beside the adapters; null: the classification head (if any)."""
    init: Literal["default", "gaussian"] = "default"
    """default: B = 0, A Kaiming; gaussian: A Gaussian."""

    @property
    def enabled(self) -> bool:
        return self.name != "none"

    def check(self) -> None:
        if not self.enabled or self.target_modules in ("attention", "all-linear"):
            return
        patterns = self.target_modules
        if not patterns:
            raise fail("lora.target_modules", [], "attention, all-linear, or module name patterns")
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise fail(
                    "lora.target_modules", pattern, f"a regular expression ({exc})"
                ) from None
