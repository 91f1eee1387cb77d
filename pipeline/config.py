"""The typed schema of every config group, and validation of a composed config.

Only pydantic and omegaconf are imported here: a bad value is reported before torch,
Lightning or MLflow load, in well under two seconds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"

COMMAND_KEYS = {"resume", "ckpt", "split", "prompt", "max_new_tokens", "temperature", "top_k"}
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
EXPORT_FORMATS = ("hf", "weights", "onnx", "adapter", "merged")
SIZE_PATTERN = r"^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?$"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}
_UNITS.update(KiB=2**10, MiB=2**20, GiB=2**30)


def parse_size(text: str) -> int:
    """'500MB' -> 500_000_000 (decimal units as transformers uses; KiB/MiB/GiB binary)."""
    match = re.match(SIZE_PATTERN, text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    return int(float(match[1]) * _UNITS[match[2] or ""])


class _Group(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Group):
    name: str
    # gpt: the GPT of the teaching texts (the shape fields below). hf: any Hugging Face
    # causal-LM / sequence-classification directory given by init_from (shape fields unused).
    arch: Literal["gpt", "hf"] = "gpt"
    vocab_size: int | None = Field(default=None, gt=0)
    context_length: int = Field(default=1024, gt=0)
    emb_dim: int = Field(default=768, gt=0)
    n_heads: int = Field(default=12, gt=0)
    n_layers: int = Field(default=12, gt=0)
    drop_rate: float = Field(default=0.0, ge=0.0, lt=1.0)
    qkv_bias: bool = False
    tie_weights: bool = True
    layer_norm_eps: float = Field(default=1e-5, gt=0.0)
    init_from: str | None = None


class TokenizerConfig(_Group):
    path: str | None = None
    vocab_size: int = Field(default=8192, ge=300)
    min_frequency: int = Field(default=2, ge=1)


class DataConfig(_Group):
    name: str
    task: Literal["classification", "causal_lm"]
    format: Literal["tsv", "csv", "jsonl", "text"]
    path: str
    synthetic_examples: int | None = Field(default=None, gt=0)
    val_path: str | None = None
    test_path: str | None = None
    text_column: str
    label_column: str | None = None
    val_fraction: float = Field(ge=0.0, lt=1.0)
    test_fraction: float = Field(ge=0.0, lt=1.0)
    max_length: int = Field(gt=1)
    # A text longer than max_length tokens: cut it with a warning, or refuse the data.
    long_sequences: Literal["truncate", "error"] = "truncate"
    num_workers: int = Field(default=0, ge=0)
    tokenizer: TokenizerConfig = TokenizerConfig()


class OptimConfig(_Group):
    name: Literal["adamw", "sgd"]
    lr: float = Field(gt=0.0)
    weight_decay: float = Field(ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0.0)
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    batch_size: int = Field(gt=0)
    eval_batch_size: int | None = Field(default=None, gt=0)
    accumulate_grad_batches: int = Field(default=1, ge=1)
    gradient_clip_val: float | None = Field(default=None, ge=0.0)
    warmup_steps: int = Field(default=0, ge=0)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(default=0.0, ge=0.0, le=1.0)


class LoraConfig(_Group):
    """PEFT LoRA settings; name=none trains every weight."""

    name: str
    r: int = Field(default=8, gt=0)
    alpha: float = Field(default=16.0, gt=0.0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    # "attention": the attention projections of whatever architecture; "all-linear": every
    # Linear layer but the output head; or a list of regular expressions searched in module
    # names (e.g. [W_query, W_value] or ["trf_blocks\\.(10|11)\\..*fc1"]).
    target_modules: str | list[str] = "attention"
    use_rslora: bool = False
    use_dora: bool = False
    bias: Literal["none", "all", "lora_only"] = "none"
    # Modules trained fully beside the adapters; null: the classification head (if any).
    modules_to_save: list[str] | None = None
    init: Literal["default", "gaussian"] = "default"

    @property
    def enabled(self) -> bool:
        return self.name != "none"


class MeasureConfig(_Group):
    """What sparsity is measured besides the weights' (logged to MLflow)."""

    # Per block: the fraction of exact zeros after the activation (ReLU), and of |x| < eps.
    activations: bool = False
    activation_eps: float = Field(default=1e-2, gt=0.0)
    # Per targeted layer: the fraction of gradient entries with |g| < threshold.
    gradients: bool = False
    gradient_threshold: float = Field(default=1e-6, gt=0.0)


# A schedule step: an optimizer step count, or a float in (0, 1], a fraction of all the run's
# optimizer steps (so that one preset serves any data size).
Step = int | float


class SparsityConfig(_Group):
    """Which weights are pruned, how they are chosen, and when (see pipeline/sparsity/)."""

    name: str
    # none | magnitude: smallest |W| | wanda: smallest |W| * ||X|| per output row, from
    # calibration samples | rigl: magnitude, then drop-and-grow by gradient during training.
    method: Literal["none", "magnitude", "wanda", "rigl"] = "none"
    # unstructured | "N:M" (at most N non-zeros in every M consecutive inputs, e.g. 2:4) |
    # structured (whole units, see `structure`).
    pattern: str = Field(default="unstructured", pattern=r"^(unstructured|structured|\d+:\d+)$")
    structure: Literal["ffn_neurons", "heads"] = "ffn_neurons"
    # attention | all-linear (every Linear but the output head) | module name patterns.
    target_modules: str | list[str] = "all-linear"
    # layer: every targeted layer at the same sparsity | global: one ranking over all of them.
    scope: Literal["layer", "global"] = "layer"
    max_layer_sparsity: float | None = Field(default=None, gt=0.0, le=1.0)
    initial: float = Field(default=0.0, ge=0.0, lt=1.0)
    final: float = Field(default=0.0, ge=0.0, lt=1.0)
    # oneshot at start_step | gradual: cubic from initial to final between start_step and
    # end_step every `frequency` steps | staged: the sparsities of `stages` at their steps.
    schedule: Literal["oneshot", "gradual", "staged"] = "oneshot"
    start_step: Step = Field(default=0, ge=0)
    end_step: Step = Field(default=1.0, ge=0)
    frequency: int = Field(default=100, gt=0)
    stages: list[tuple[Step, float]] = []
    # lambda * sum|W| over the targeted weights, added to the loss.
    l1_lambda: float = Field(default=0.0, ge=0.0)
    # rigl: the fraction of non-zeros dropped (and regrown) at the first update, cosine-decayed.
    drop_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    # wanda: training examples whose activations score the weights.
    calibration_samples: int = Field(default=128, gt=0)
    # 2:4 weights as torch's semi-structured sparse tensors for inference (CUDA, sm >= 8.0).
    accelerate: bool = False
    measure: MeasureConfig = MeasureConfig()

    @property
    def enabled(self) -> bool:
        """Whether weights are pruned or penalised."""
        return self.method != "none" or self.l1_lambda > 0

    @property
    def active(self) -> bool:
        """Whether the run needs the sparsity callback (pruning or measuring)."""
        return self.enabled or self.measure.activations or self.measure.gradients

    @property
    def nm(self) -> tuple[int, int] | None:
        if ":" not in self.pattern:
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)


class CheckpointConfig(_Group):
    monitor: str | None = "val/loss"
    mode: Literal["min", "max"] = "min"
    save_top_k: int = Field(default=1, ge=-1)
    save_last: bool = True
    # Also write last.ckpt every N optimizer steps (null: only at validation), so a crash
    # mid-epoch loses at most N steps.
    every_n_train_steps: int | None = Field(default=None, gt=0)


class TrainerConfig(_Group):
    name: str
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"]
    devices: int | Literal["auto"] = 1
    num_nodes: int = Field(default=1, ge=1)
    strategy: str = "auto"
    precision: Literal[PRECISIONS] = "32-true"  # type: ignore[valid-type]
    max_epochs: int | None = Field(default=None, ge=1)
    max_steps: int = Field(default=-1, ge=-1)
    val_check_interval: int | float = 1.0
    log_every_n_steps: int = Field(default=10, gt=0)
    num_sanity_val_steps: int = Field(default=2, ge=-1)
    deterministic: bool = True
    compile: bool = False
    enable_progress_bar: bool = True
    checkpoint: CheckpointConfig = CheckpointConfig()


class LoggerConfig(_Group):
    name: Literal["mlflow", "none"]
    tracking_uri: str | None = None
    experiment_name: str = Field(min_length=1)
    run_name: str | None = None
    log_checkpoint: Literal["best", "last", "none"] = "best"


class ExportConfig(_Group):
    formats: list[Literal[EXPORT_FORMATS]] = ["hf"]  # type: ignore[valid-type]
    dir: str | None = None
    # Larger safetensors weights are split into shards with an index, as transformers does.
    max_shard_size: str = Field(default="5GB", pattern=SIZE_PATTERN)

    @property
    def max_shard_bytes(self) -> int:
        return parse_size(self.max_shard_size)


class PathsConfig(_Group):
    root: str
    outputs: str


class AppConfig(_Group):
    """A composed, validated config. Entry points other than train add their own keys."""

    seed: int
    # Continue an interrupted run: auto (the latest unfinished run of logger.experiment_name),
    # a run folder, an MLflow run id, or a .ckpt.
    resume: str | None = None
    paths: PathsConfig
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    lora: LoraConfig
    sparsity: SparsityConfig
    trainer: TrainerConfig
    logger: LoggerConfig
    export: ExportConfig = ExportConfig()
    # evaluate / generate / export (COMMAND_KEYS: not part of a training run's record)
    ckpt: str | None = None
    split: Literal["train", "val", "test"] = "test"
    prompt: str = ""
    max_new_tokens: int = Field(default=50, ge=0)
    temperature: float = Field(default=1.0, ge=0.0)
    top_k: int | None = Field(default=None, gt=0)


def _fail(key: str, value: Any, allowed: str) -> UserError:
    return UserError(
        f"Config error: {key}={value!r} is not allowed: {allowed}. "
        f"Fix it on the command line ({key}=...) or in its YAML file under conf/."
    )


def _describe(error: Any) -> UserError:
    """One pydantic error as a sentence that names the key, the value and what is allowed."""
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        known = _known_keys(error["loc"][:-1])
        return UserError(
            f"Config error: unknown key {key!r}. Allowed keys here: {', '.join(known)}. "
            "Check the spelling; a new key needs a schema field in pipeline/config.py."
        )
    if error["type"] == "missing":
        return UserError(
            f"Config error: {key} is required but not set. Set it on the command line ({key}=...)."
        )
    message = error["msg"]
    if error["type"] == "string_pattern_mismatch":
        message = "must be a size such as 500MB, 5GB or 2GiB"
    if message.startswith("Input should be "):
        message = "must be " + message[len("Input should be ") :]
    return _fail(key, error.get("input"), message)


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = AppConfig
    for part in loc:
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return sorted(model.model_fields)


def _check_consistency(cfg: AppConfig) -> None:
    """Rules that involve more than one field."""
    m, d, t = cfg.model, cfg.data, cfg.trainer
    if m.arch == "hf" and not m.init_from:
        raise _fail(
            "model.init_from",
            None,
            "a Hugging Face model directory (config.json + weights) when model=hf",
        )
    if m.init_from and not Path(m.init_from).expanduser().exists():
        raise _fail("model.init_from", m.init_from, "an existing directory or file (not found)")
    lora_only = sorted({"adapter", "merged"} & set(cfg.export.formats))
    if cfg.ckpt is None and lora_only and not cfg.lora.enabled:
        raise _fail(
            "export.formats",
            cfg.export.formats,
            f"{', '.join(lora_only)} only with adapters: choose a lora preset (lora=default)",
        )
    if cfg.lora.enabled and cfg.lora.target_modules not in ("attention", "all-linear"):
        patterns = cfg.lora.target_modules
        if not patterns:
            raise _fail("lora.target_modules", [], "attention, all-linear, or module name patterns")
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise _fail(
                    "lora.target_modules", pattern, f"a regular expression ({exc})"
                ) from None
    _check_sparsity(cfg.sparsity)
    if m.arch == "gpt" and m.emb_dim % m.n_heads:
        divisors = [h for h in range(1, min(m.emb_dim, 64) + 1) if m.emb_dim % h == 0]
        raise _fail(
            "model.n_heads",
            m.n_heads,
            f"model.emb_dim ({m.emb_dim}) must be divisible by model.n_heads; "
            f"head counts that divide it: {divisors}",
        )
    if m.arch == "gpt" and not m.init_from and d.max_length > m.context_length:
        raise _fail(
            "data.max_length",
            d.max_length,
            f"at most model.context_length ({m.context_length})",
        )
    if d.task == "classification" and not d.label_column:
        raise _fail(
            "data.label_column",
            d.label_column,
            "classification needs the name of the label column (or data.task=causal_lm)",
        )
    if d.val_fraction + d.test_fraction >= 1.0:
        raise _fail(
            "data.val_fraction",
            d.val_fraction,
            f"data.val_fraction + data.test_fraction (now {d.test_fraction}) must stay below 1",
        )
    if d.synthetic_examples is None:
        for key in ("path", "val_path", "test_path"):
            value = getattr(d, key)
            if value is not None and not Path(value).is_file():
                raise _fail(f"data.{key}", value, "an existing file (no such file)")
    if t.max_epochs is None and t.max_steps == -1:
        raise _fail(
            "trainer.max_steps",
            t.max_steps,
            "a positive step count when trainer.max_epochs is null (training would never end)",
        )
    if t.max_steps == 0:
        raise _fail("trainer.max_steps", 0, "-1 (no limit) or a positive step count")
    if isinstance(t.val_check_interval, float) and not 0.0 < t.val_check_interval <= 1.0:
        raise _fail(
            "trainer.val_check_interval",
            t.val_check_interval,
            "a fraction of an epoch in (0, 1] or a whole number of batches",
        )
    if isinstance(t.val_check_interval, int) and t.val_check_interval < 1:
        raise _fail("trainer.val_check_interval", t.val_check_interval, "at least 1 batch")
    if t.accelerator == "cpu" and t.precision == "16-mixed":
        raise _fail(
            "trainer.precision",
            t.precision,
            "32-true or bf16-mixed on the CPU (16-mixed needs a GPU)",
        )
    if isinstance(t.devices, int) and t.devices < 1:
        raise _fail("trainer.devices", t.devices, "a positive device count or 'auto'")
    if cfg.logger.log_checkpoint == "best" and t.checkpoint.save_top_k == 0:
        raise _fail(
            "logger.log_checkpoint",
            "best",
            "'last' or 'none' when trainer.checkpoint.save_top_k=0 (no best checkpoint is kept)",
        )


def _check_sparsity(s: SparsityConfig) -> None:
    if s.nm is not None:
        n, m = s.nm
        if not 0 < n < m:
            raise _fail("sparsity.pattern", s.pattern, "N:M with 0 < N < M, e.g. 2:4 or 4:8")
        if s.method == "rigl":
            raise _fail("sparsity.pattern", s.pattern, "unstructured or structured with rigl")
    if s.method == "none":
        return
    if s.pattern == "structured" and s.method != "magnitude":
        raise _fail("sparsity.method", s.method, "magnitude for structured pruning")
    if s.schedule == "staged":
        if not s.stages:
            raise _fail(
                "sparsity.stages", [], "a list of [step, sparsity] pairs, e.g. [[100, 0.3]]"
            )
        levels = [level for _, level in s.stages]
        if levels != sorted(levels) or not all(0.0 <= v < 1.0 for v in levels):
            raise _fail("sparsity.stages", s.stages, "sparsities in [0, 1), non-decreasing")
    elif s.nm is None and s.final == 0.0:
        raise _fail("sparsity.final", 0.0, f"a target sparsity in (0, 1) for method={s.method}")
    if s.schedule == "gradual" and s.initial > s.final:
        raise _fail("sparsity.initial", s.initial, f"at most sparsity.final ({s.final})")
    if s.schedule != "staged" and s.nm is not None and s.schedule != "oneshot":
        raise _fail("sparsity.schedule", s.schedule, "oneshot for an N:M pattern")
    steps = [("start_step", s.start_step), ("end_step", s.end_step)]
    steps += [("stages", step) for step, _ in s.stages]
    for key, step in steps:
        if isinstance(step, float) and not 0.0 <= step <= 1.0:
            raise _fail(f"sparsity.{key}", step, "a step count, or a fraction in [0, 1]")
    spans = s.schedule == "gradual" or s.method == "rigl"
    if spans and type(s.start_step) is type(s.end_step) and s.start_step >= s.end_step:
        raise _fail("sparsity.end_step", s.end_step, f"after start_step ({s.start_step})")
    if s.max_layer_sparsity is not None and s.scope == "global":
        top = max([s.final, *(level for _, level in s.stages)])
        if s.max_layer_sparsity < top:
            raise _fail(
                "sparsity.max_layer_sparsity",
                s.max_layer_sparsity,
                f"at least the target sparsity ({top}), or no global count can be met",
            )
    if s.accelerate and s.nm != (2, 4):
        raise _fail("sparsity.accelerate", True, "only with sparsity.pattern=2:4")


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python data (interpolation errors become UserErrors)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingMandatoryValue as exc:
        raise UserError(
            f"Config error: {exc.full_key} is required but not set. "
            f"Set it on the command line ({exc.full_key}=...)."
        ) from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise UserError(
            f"Config error: {key} could not be resolved ({str(exc).splitlines()[0]}). "
            f"Set it on the command line ({key}=...)."
        ) from None


def validate(cfg: DictConfig | dict[str, Any]) -> AppConfig:
    """Check types, ranges and cross-field rules; raise UserError naming the first bad key."""
    raw = to_container(cfg) if isinstance(cfg, DictConfig) else cfg
    try:
        app = AppConfig.model_validate(raw)
    except ValidationError as exc:
        raise _describe(exc.errors()[0]) from None
    _check_consistency(app)
    return app
