"""Our Lightning checkpoints (.ckpt): every key they carry beyond Lightning's own, the format's
version, and reading one safely.

Beside Lightning's keys (state_dict, optimizer_states, lr_schedulers, loops, epoch, ...):

- METADATA_KEY: what rebuilds the model without its config files: the model's own metadata
  (`arch` and its config: `gpt_config`, or `hf_config` and `n_outputs`), the tokenizer, the
  label names, the run's resolved config, the LoRA settings, the pretrained `base` a LoRA run
  started from, and `format_version`. With a `base`, state_dict holds only the tensors that
  trained (the base file has the rest).
- RNG_KEY: the random generators' states, so a resumed run draws the same dropout masks.
- SPARSITY_KEY: the sparsity masks, the schedule's step and its history.
- TRAIN_MEANS_KEY: the training loss (and accuracy) means of the epoch so far.
- COMPRESSION_KEY: the gradient compression's state (`method`): top-k's residuals, the
  gradient each rank has not sent yet (`residuals`: one {parameter name: tensor} per rank),
  or PowerSGD's count of exchanges (`step`).

Version 0, before the format had a number, has the same keys; checkpoints of a newer version
than this code knows are refused with the fix.
"""

from __future__ import annotations

import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError

FORMAT_VERSION = 1
METADATA_KEY = "pipeline"
RNG_KEY = "rng_states"
SPARSITY_KEY = "sparsity"
TRAIN_MEANS_KEY = "train_epoch_means"
COMPRESSION_KEY = "gradient_compression"
# The metadata's own keys; the rest of it is the model's (metadata()).
_OWN = ("tokenizer", "label_names", "config", "lora", "base", "format_version")


@dataclass
class Metadata:
    model: dict[str, Any]
    tokenizer: str | None = None  # TextTokenizer.to_json()
    label_names: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] | None = None
    base: str | None = None
    version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.model,
            "tokenizer": self.tokenizer,
            "label_names": self.label_names,
            "config": self.config,
            "lora": self.lora,
            "base": self.base,
            "format_version": self.version,
        }

    @classmethod
    def of(cls, ckpt: dict[str, Any], path: str | Path) -> Metadata:
        meta = ckpt.get(METADATA_KEY)
        if not isinstance(meta, dict):
            raise foreign(path)
        version = meta.get("format_version", 0)
        if version > FORMAT_VERSION:
            raise UserError(
                f"{path} was written by a newer version of this pipeline (checkpoint format "
                f"{version}; this one reads up to {FORMAT_VERSION}). Update the project (git pull, "
                "then make install) to use it."
            )
        return cls(
            model={k: v for k, v in meta.items() if k not in _OWN},
            tokenizer=meta.get("tokenizer"),
            label_names=meta.get("label_names") or [],
            config=meta.get("config") or {},
            lora=meta.get("lora"),
            base=meta.get("base"),
            version=version,
        )


def foreign(path: str | Path) -> UserError:
    return UserError(
        f"{path} is a Lightning checkpoint without this pipeline's metadata (model shape, "
        "tokenizer). Use a checkpoint written by pipeline.train, or pass it as "
        "model.init_from with a model preset of its shape."
    )


def has_metadata(ckpt: dict[str, Any]) -> bool:
    """Whether a Lightning checkpoint was written by this pipeline."""
    return METADATA_KEY in ckpt


def read(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint, memory-mapped (the optimizer state it also holds is never read
    into memory), with nothing but plain data unpickled."""
    try:
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


def model_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's tensors, named as in the model (without the LightningModule's `model.`)."""
    return {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}


def keep_trainable(ckpt: dict[str, Any], model: torch.nn.Module) -> None:
    """Drop the frozen tensors from a checkpoint being saved (LoRA on a pretrained base)."""
    trainable = {f"model.{n}" for n, p in model.named_parameters() if p.requires_grad}
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if k in trainable}


def sparsity_entry(
    masks: dict[str, torch.Tensor], step: int, history: list[tuple[int, float]]
) -> dict[str, Any]:
    return {"masks": masks, "step": step, "history": [list(h) for h in history]}


def masks(ckpt: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The sparsity keep-masks by parameter name, if the run pruned."""
    return (ckpt.get(SPARSITY_KEY) or {}).get("masks") or None


def batches_done(path: str | Path) -> int:
    """How many training batches the checkpoint's epoch had finished when it was saved."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"]


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch generator states as tensors and lists (weights_only-loadable)."""
    import numpy as np

    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": [version, list(state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    import numpy as np

    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
