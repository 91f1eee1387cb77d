"""conf/sparsity/: which weights are pruned, how they are chosen, when; and what is measured
(see pipeline/sparsity/)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config.base import Group, fail

# A schedule step: an optimizer step count, or a float in (0, 1], a fraction of all the run's
# optimizer steps (so that one preset serves any data size).
Step = int | float


class MeasureConfig(Group):
    """What sparsity is measured besides the weights' (logged to MLflow)."""

    activations: bool = False
    """Per block: the fraction of exact zeros after the activation, and of |x| < eps."""
    activation_eps: float = Field(default=1e-2, gt=0.0)
    """The threshold of 'near zero' activations."""
    gradients: bool = False
    """Per targeted layer: the fraction of gradient entries with |g| < gradient_threshold."""
    gradient_threshold: float = Field(default=1e-6, gt=0.0)
    """The threshold of 'near zero' gradients."""
    attention: bool = False
    """Per layer and head: the share of attention probabilities below attention_eps, and the
    attention entropy, from attention_batches validation batches (computed again with an
    explicit softmax, which the fused kernels never materialise)."""
    attention_eps: float = Field(default=1e-3, gt=0.0, lt=1.0)
    """The threshold of 'near zero' attention probabilities."""
    attention_batches: int = Field(default=2, gt=0)
    """Validation batches measured at each validation."""


class SparsityConfig(Group):
    name: str
    """The preset's name (none, magnitude, gradual, nm_2_4, structured, l1, rigl, wanda)."""
    method: Literal["none", "magnitude", "wanda", "rigl"] = "none"
    """magnitude: smallest |W|; wanda: smallest |W| * ||X|| per output row, from calibration
    samples; rigl: magnitude, then drop-and-grow by gradient during training."""
    pattern: str = Field(default="unstructured", pattern=r"^(unstructured|structured|\d+:\d+)$")
    """unstructured; "N:M" (at most N non-zeros in every M consecutive inputs, e.g. 2:4);
    structured (whole units, see structure)."""
    structure: Literal["ffn_neurons", "heads"] = "ffn_neurons"
    """The units structured pruning removes."""
    target_modules: str | list[str] = "all-linear"
    """attention, all-linear (every Linear but the output head), or module name patterns."""
    scope: Literal["layer", "global"] = "layer"
    """layer: every targeted layer at the same sparsity; global: one ranking over all of them."""
    max_layer_sparsity: float | None = Field(default=None, gt=0.0, le=1.0)
    """With scope=global: no layer is pruned beyond this."""
    initial: float = Field(default=0.0, ge=0.0, lt=1.0)
    """The sparsity a gradual schedule starts from."""
    final: float = Field(default=0.0, ge=0.0, lt=1.0)
    """The target sparsity."""
    schedule: Literal["oneshot", "gradual", "staged"] = "oneshot"
    """oneshot at start_step; gradual: cubic from initial to final between start_step and
    end_step every frequency steps; staged: the sparsities of stages at their steps."""
    start_step: Step = Field(default=0, ge=0)
    """When pruning starts (a step, or a fraction of the run's steps)."""
    end_step: Step = Field(default=1.0, ge=0)
    """When a gradual schedule reaches final (a step, or a fraction of the run's steps)."""
    frequency: int = Field(default=100, gt=0)
    """Optimizer steps between a gradual schedule's updates."""
    stages: list[tuple[Step, float]] = Field(default=[])
    """[step, sparsity] pairs of a staged schedule."""
    l1_lambda: float = Field(default=0.0, ge=0.0)
    """lambda * sum|W| over the targeted weights, added to the loss."""
    drop_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    """rigl: the fraction of non-zeros dropped (and regrown) at the first update,
    cosine-decayed."""
    calibration_samples: int = Field(default=128, gt=0)
    """wanda: training examples whose activations score the weights."""
    accelerate: bool = False
    """2:4 weights as torch's semi-structured sparse tensors for inference (CUDA, sm >= 8.0)."""
    measure: MeasureConfig = MeasureConfig()

    @property
    def enabled(self) -> bool:
        """Whether weights are pruned or penalised."""
        return self.method != "none" or self.l1_lambda > 0

    @property
    def active(self) -> bool:
        """Whether the run needs the sparsity callback (pruning or measuring)."""
        m = self.measure
        return self.enabled or m.activations or m.gradients or m.attention

    @property
    def nm(self) -> tuple[int, int] | None:
        if ":" not in self.pattern:
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)

    def check(self) -> None:
        if self.nm is not None:
            n, m = self.nm
            if not 0 < n < m:
                raise fail("sparsity.pattern", self.pattern, "N:M with 0 < N < M, e.g. 2:4 or 4:8")
            if self.method == "rigl":
                raise fail("sparsity.pattern", self.pattern, "unstructured or structured with rigl")
        if self.method == "none":
            return
        if self.pattern == "structured" and self.method != "magnitude":
            raise fail("sparsity.method", self.method, "magnitude for structured pruning")
        self._check_schedule()
        if self.max_layer_sparsity is not None and self.scope == "global":
            top = max([self.final, *(level for _, level in self.stages)])
            if self.max_layer_sparsity < top:
                raise fail(
                    "sparsity.max_layer_sparsity",
                    self.max_layer_sparsity,
                    f"at least the target sparsity ({top}), or no global count can be met",
                )
        if self.accelerate and self.nm != (2, 4):
            raise fail("sparsity.accelerate", True, "only with sparsity.pattern=2:4")

    def _check_schedule(self) -> None:
        if self.schedule == "staged":
            if not self.stages:
                raise fail(
                    "sparsity.stages", [], "a list of [step, sparsity] pairs, e.g. [[100, 0.3]]"
                )
            levels = [level for _, level in self.stages]
            if levels != sorted(levels) or not all(0.0 <= v < 1.0 for v in levels):
                raise fail("sparsity.stages", self.stages, "sparsities in [0, 1), non-decreasing")
        elif self.nm is None and self.final == 0.0:
            raise fail(
                "sparsity.final", 0.0, f"a target sparsity in (0, 1) for method={self.method}"
            )
        if self.schedule == "gradual" and self.initial > self.final:
            raise fail("sparsity.initial", self.initial, f"at most sparsity.final ({self.final})")
        if self.schedule != "staged" and self.nm is not None and self.schedule != "oneshot":
            raise fail("sparsity.schedule", self.schedule, "oneshot for an N:M pattern")
        steps = [("start_step", self.start_step), ("end_step", self.end_step)]
        steps += [("stages", step) for step, _ in self.stages]
        for key, step in steps:
            if isinstance(step, float) and not 0.0 <= step <= 1.0:
                raise fail(f"sparsity.{key}", step, "a step count, or a fraction in [0, 1]")
        spans = self.schedule == "gradual" or self.method == "rigl"
        start, end = self.start_step, self.end_step
        if spans and type(start) is type(end) and start >= end:
            raise fail("sparsity.end_step", end, f"after start_step ({start})")
