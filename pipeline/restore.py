"""A trained model with what it needs to be used again: tokenizer, labels, task, config.

`ckpt=` and `model.init_from` accept a run folder, a Lightning `.ckpt`, a Hugging Face GPT-2
directory, or a single weights file (`.safetensors`, `.pth`, `.pt`, `.bin`).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError
from pipeline.model.gpt import GPTConfig, GPTModel
from pipeline.model.weights import (
    build_from_state,
    gpt_config_from_hf,
    load_into,
    read_hf_dir,
    read_state_dict,
)
from pipeline.tokenizer import TextTokenizer

CHECKPOINT_KEY = "pipeline"  # where our metadata lives inside a Lightning checkpoint
SPARSITY_KEY = "sparsity"  # masks (pipeline.sparsity.callback)


@dataclass
class Trained:
    model: GPTModel | Any  # or pipeline.model.hf.HFModel (imported only for model=hf)
    tokenizer: TextTokenizer | None
    label_names: list[str] = field(default_factory=list)
    # The resolved config of the run that produced it, when known.
    config: dict[str, Any] = field(default_factory=dict)
    # The LoRA settings when the model carries adapters.
    lora: dict[str, Any] | None = None
    # For LoRA on pretrained weights: their path. Checkpoints then hold only what trains.
    base: str | None = None
    # Sparsity: keep-masks by parameter name (exports re-apply them after merging LoRA), and the
    # layers they target.
    masks: dict[str, torch.Tensor] | None = None
    sparse_layers: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        return "causal_lm" if self.model.is_lm else "classification"

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {
            **self.model.metadata(),
            "tokenizer": self.tokenizer.to_json() if self.tokenizer else None,
            "label_names": self.label_names,
            "config": self.config,
            "lora": self.lora,
            "base": self.base,
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


def read_lightning_checkpoint(path: Path) -> dict[str, Any]:
    try:
        # Memory-mapped: the optimizer state it also holds is never read into memory.
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"Refused to load {path}: it needs more than plain data to unpickle "
            f"({str(exc).splitlines()[0]}), and unpickling arbitrary objects can run code."
        ) from None
    except Exception as exc:
        raise UserError(
            f"{path} could not be read as a Lightning checkpoint "
            f"({str(exc).splitlines()[0]}); it may be truncated, or not a .ckpt."
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(f"{path} is not a Lightning checkpoint (it has no state_dict).")
    return ckpt


def load_lightning_checkpoint(path: Path) -> Trained:
    return trained_from_checkpoint(read_lightning_checkpoint(path), path)


def trained_from_checkpoint(ckpt: dict[str, Any], path: Path) -> Trained:
    meta = ckpt.get(CHECKPOINT_KEY)
    if not isinstance(meta, dict):
        raise UserError(
            f"{path} is a Lightning checkpoint without this pipeline's metadata (model shape, "
            "tokenizer). Use a checkpoint written by pipeline.train, or pass it as "
            "model.init_from with a model preset of its shape."
        )
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    tokenizer = TextTokenizer.from_json(meta["tokenizer"]) if meta.get("tokenizer") else None
    labels, config, base = meta.get("label_names") or [], meta.get("config") or {}, meta.get("base")
    if base is not None:
        model = _base_model(meta, base, tokenizer, labels)
    elif meta.get("arch") == "hf":
        from pipeline.model.hf import HFModel

        model = HFModel.from_metadata(meta)
    elif meta.get("lora"):
        model = GPTModel(GPTConfig(**meta["gpt_config"]))
    else:
        model = build_from_state(GPTConfig(**meta["gpt_config"]), state, str(path))
    if meta.get("lora"):
        from pipeline.config import LoraConfig
        from pipeline.lora import apply_lora

        model = apply_lora(model, LoraConfig(**meta["lora"]))
    if meta.get("arch") == "hf" or meta.get("lora"):
        missing = model.load_state_dict(state, strict=base is None).missing_keys
        trainable = [k for k, p in model.named_parameters() if p.requires_grad and k in missing]
        if trainable:
            raise UserError(f"{path} lacks trained weights: {', '.join(trainable[:4])}.")
    masks = (ckpt.get(SPARSITY_KEY) or {}).get("masks") or None
    if masks:
        # LoRA checkpoints on pretrained weights load the dense base file.
        from pipeline.sparsity.targets import apply_masks

        apply_masks(model, masks)
    return Trained(model, tokenizer, labels, config, meta.get("lora"), base, masks)


def _base_model(meta: dict, base: str, tokenizer: TextTokenizer | None, labels: list[str]):
    """The pretrained weights a LoRA checkpoint refers to, with the run's head shape."""
    if not Path(base).exists():
        raise UserError(
            f"This LoRA checkpoint holds only the adapters; its base weights were at {base}, "
            "which no longer exists. Restore that path, or export the merged model next time."
        )
    n_outputs = meta["n_outputs"] if meta.get("arch") == "hf" else meta["gpt_config"]["n_outputs"]
    if meta.get("arch") == "hf":
        from pipeline.model.hf import HFModel

        return HFModel.from_pretrained(base, n_outputs, tokenizer.pad_id, labels)
    model = GPTModel(GPTConfig(**meta["gpt_config"]))
    load_into(model, load_pretrained(base).state, base, new_head=n_outputs is not None)
    return model


def has_tokenizer(directory: Path) -> bool:
    return (directory / "tokenizer.json").is_file() or (directory / "vocab.json").is_file()


def load_hf_directory(directory: Path) -> Trained:
    """A GPT-2 directory as our GPT; any other architecture through transformers."""
    config, state = read_hf_dir(directory)
    tokenizer = TextTokenizer.load(directory) if has_tokenizer(directory) else None
    labels = config.get("pipeline_label_names") or []
    if config.get("model_type") == "gpt2":
        model = build_from_state(gpt_config_from_hf(config), state, str(directory))
        return Trained(model, tokenizer, labels)
    from pipeline.model.hf import HFModel

    classifier = any("ForSequenceClassification" in a for a in config.get("architectures", []))
    # transformers writes id2label, not num_labels; one logit is our binary classifier.
    n_outputs = (len(config.get("id2label") or {}) or len(labels) or 2) if classifier else None
    pad_id = tokenizer.pad_id if tokenizer else config.get("pad_token_id") or 0
    model = HFModel.from_pretrained(directory, n_outputs, pad_id, labels)
    return Trained(model, tokenizer, labels)


def load_trained(path: str | Path) -> Trained:
    """Whatever `path` holds, as a Trained model in eval mode (see the module docstring for
    the layouts)."""
    trained = _load_trained(Path(path).expanduser())
    trained.model.eval()
    return trained


def _load_trained(path: Path) -> Trained:
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
    """Weights for our GPT from any supported layout (model.init_from)."""
    path = Path(path).expanduser()
    if path.suffix == ".ckpt":
        ckpt = read_lightning_checkpoint(path)
        if CHECKPOINT_KEY not in ckpt:
            # Another project's Lightning checkpoint: its weights, the shape from the preset.
            return Pretrained(ckpt["state_dict"])
        trained = trained_from_checkpoint(ckpt, path)
    elif path.is_dir():
        if (path / "config.json").is_file():
            # Refuse other architectures before loading them (and transformers) at all.
            gpt_config_from_hf(json.loads((path / "config.json").read_text()))
        trained = load_trained(path)
    else:
        return Pretrained(read_state_dict(path))
    model = trained.model
    if trained.lora:
        from pipeline.lora import plain_copy

        model = plain_copy(model, merge=True)  # a LoRA run continues from its merged weights
    if not isinstance(model, GPTModel):
        raise UserError(
            f"{path} holds a {model.hf.config.model_type!r} model, not a GPT-2. Train it "
            "with model=hf model.init_from=<its export/hf folder>."
        )
    return Pretrained(model.state_dict(), model.cfg, trained.tokenizer)
