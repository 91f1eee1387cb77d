"""Weights files read and written safely: safetensors memory-mapped, pickles only with
`weights_only=True` (a pickle can run code), Hugging Face directories one file or sharded with
an index, and every write atomic (temporary name, then rename)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.errors import UserError, first_line
from pipeline.files import atomic_write, write_json

StateDict = dict[str, torch.Tensor]
MAX_SHARD_BYTES = 5 * 10**9  # export.max_shard_size's default, as transformers uses


def read_state_dict(path: str | Path) -> StateDict:
    """A .safetensors file (memory-mapped) or a pickled state dict (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise UserError(
                f"{path} is not a readable safetensors file ({exc}); it may be truncated or "
                "corrupt. Download or export it again."
            ) from None
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # Files in torch's legacy (pre-zipfile) format cannot be memory-mapped.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        wants_code = [line for line in str(exc).splitlines() if "GLOBAL" in line]
        if not wants_code:
            # Not a pickle that names a function to call: bytes that are no pickle at all.
            raise UserError(
                f"{path} could not be read (not a torch or safetensors file); it may be "
                "truncated or corrupt."
            ) from None
        raise UserError(
            f"Refused to load {path}: it needs more than plain tensors to unpickle "
            f"({wants_code[0].strip()}), and unpickling arbitrary objects can run code. "
            "Convert it to .safetensors where it came from, or re-save only its state_dict."
        ) from None
    except Exception as exc:  # torch.load on damaged bytes raises whatever its parser meets
        raise UserError(
            f"{path} could not be read ({first_line(exc)}); it may be truncated or corrupt. "
            "Download or export it again."
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return obj


HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def read_hf_weights(directory: str | Path) -> StateDict:
    """The weights of a Hugging Face directory: one file, or the shards its index names."""
    directory = Path(directory)
    for name in HF_WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return read_state_dict(path)
        weight_map = read_json(path).get("weight_map")
        shards = set(weight_map.values()) if isinstance(weight_map, dict) else {None}
        if not all(isinstance(s, str) and (directory / s).parent == directory for s in shards):
            raise UserError(
                f"{path} is not a valid shard index: its weight_map must name shard files in "
                "the same folder. Export or download the model again."
            )
        state: StateDict = {}
        for shard in sorted(shards):
            state.update(read_state_dict(directory / shard))
        return state
    raise UserError(f"{directory} has no weights: expected one of {', '.join(HF_WEIGHT_FILES)}.")


def read_hf_dir(directory: str | Path) -> tuple[dict, StateDict]:
    """config.json and the weights of a Hugging Face directory."""
    directory = Path(directory)
    return read_json(directory / "config.json"), read_hf_weights(directory)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a model's folder (config.json, a shard index), or a UserError that
    names the file."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, or not JSON
        raise UserError(
            f"{path} could not be read as JSON ({first_line(exc)}); it may be truncated or corrupt. "
            "Download or export the model again."
        ) from None
    if not isinstance(content, dict):
        raise UserError(
            f"{path} holds a JSON {type(content).__name__}, not an object. Download or export "
            "the model again."
        )
    return content


def save_safetensors(tensors: StateDict, directory: Path, max_shard_bytes: int) -> None:
    """model.safetensors, or shards of at most max_shard_bytes plus the index transformers
    reads; weight files of the other layout left by an earlier export are removed."""
    sizes = {k: v.numel() * v.element_size() for k, v in tensors.items()}
    shards: list[list[str]] = [[]]
    used = 0
    for key in tensors:
        if shards[-1] and used + sizes[key] > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += sizes[key]
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, keys in zip(names, shards, strict=True):
        part = {k: tensors[k] for k in keys}
        atomic_write(
            directory / name,
            lambda tmp, part=part: save_file(part, str(tmp), metadata={"format": "pt"}),
        )
    index = directory / "model.safetensors.index.json"
    if len(shards) > 1:
        weight_map = {k: name for name, keys in zip(names, shards, strict=True) for k in keys}
        write_json(
            index, {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        )
    keep = {*names, index.name} if len(shards) > 1 else set(names)
    for stale in directory.glob("model*.safetensors*"):
        if stale.name not in keep:
            stale.unlink()
