"""A trained model with what it needs to be used again: tokenizer, labels, task, config.

`ckpt=` and `model.init_from` accept a run folder, a Lightning `.ckpt`, a Hugging Face GPT-2
directory, or a single weights file (`.safetensors`, `.pth`, `.pt`, `.bin`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError
from pipeline.model.gpt import GPTConfig, GPTModel
from pipeline.model.weights import gpt_config_from_hf, load_into, read_hf_dir, read_state_dict
from pipeline.tokenizer import TextTokenizer

CHECKPOINT_KEY = "pipeline"  # where our metadata lives inside a Lightning checkpoint


@dataclass
class Trained:
    model: GPTModel
    tokenizer: TextTokenizer | None
    label_names: list[str] = field(default_factory=list)
    # The resolved config of the run that produced it, when known.
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return "causal_lm" if self.model.cfg.is_lm else "classification"

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {
            "gpt_config": self.model.cfg.to_dict(),
            "tokenizer": self.tokenizer.to_json() if self.tokenizer else None,
            "label_names": self.label_names,
            "config": self.config,
        }


def run_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run folder stands for: its best one, else last.ckpt."""
    record = run_dir / "run.json"
    if record.is_file():
        best = json.loads(record.read_text()).get("paths", {}).get("best_checkpoint")
        if best and Path(best).is_file():
            return Path(best)
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    raise UserError(
        f"{run_dir} looks like a run folder but holds no checkpoint (checkpoints/last.ckpt). "
        "Did its training finish? Pass a .ckpt or an export directory instead."
    )


def load_lightning_checkpoint(path: Path) -> Trained:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"{path} could not be read as a Lightning checkpoint "
            f"({str(exc).splitlines()[0]}); it may be truncated, or not a .ckpt."
        ) from None
    meta = ckpt.get(CHECKPOINT_KEY)
    if not isinstance(meta, dict):
        raise UserError(
            f"{path} is a Lightning checkpoint without this pipeline's metadata (model shape, "
            "tokenizer). Use a checkpoint written by pipeline.train."
        )
    model = GPTModel(GPTConfig(**meta["gpt_config"]))
    load_into(model, ckpt["state_dict"], str(path))
    tokenizer = TextTokenizer.from_json(meta["tokenizer"]) if meta.get("tokenizer") else None
    return Trained(model, tokenizer, meta.get("label_names") or [], meta.get("config") or {})


def load_hf_directory(directory: Path) -> Trained:
    config, state = read_hf_dir(directory)
    model = GPTModel(gpt_config_from_hf(config))
    load_into(model, state, str(directory))
    has_tokenizer = (directory / "tokenizer.json").is_file() or (directory / "vocab.json").is_file()
    tokenizer = TextTokenizer.load(directory) if has_tokenizer else None
    return Trained(model, tokenizer, config.get("pipeline_label_names") or [])


def load_trained(path: str | Path) -> Trained:
    """Whatever `path` holds, as a Trained model (see the module docstring for the layouts)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(
            f"{path} does not exist. Pass a run folder, a .ckpt, an export folder, or a "
            "weights file."
        )
    if path.is_dir():
        if (path / "config.json").is_file():
            return load_hf_directory(path)
        if (path / "export" / "hf" / "config.json").is_file() and not (
            path / "checkpoints"
        ).is_dir():
            return load_hf_directory(path / "export" / "hf")
        return load_lightning_checkpoint(run_checkpoint(path))
    if path.suffix == ".ckpt":
        return load_lightning_checkpoint(path)
    raise UserError(
        f"{path} is a bare weights file: it carries no model shape or tokenizer. Use it as "
        "model.init_from=... in training, or pass its folder with a config.json."
    )


@dataclass
class Pretrained:
    """What model.init_from brings: weights, and the shape and tokenizer when the source has them."""

    state: dict[str, torch.Tensor]
    shape: GPTConfig | None = None
    tokenizer: TextTokenizer | None = None


def load_pretrained(path: str | Path) -> Pretrained:
    path = Path(path).expanduser()
    if path.is_dir() or path.suffix == ".ckpt":
        trained = load_trained(path)
        return Pretrained(trained.model.state_dict(), trained.model.cfg, trained.tokenizer)
    return Pretrained(read_state_dict(path))
