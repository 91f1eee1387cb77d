"""What a path holds, for `ckpt=` and `model.init_from` alike: the one place that tells the
layouts apart.

- a Lightning checkpoint (.ckpt), or a run folder, which stands for its best checkpoint (from
  run.json), else its last.ckpt;
- a Hugging Face directory (config.json + weights), or a folder holding export/hf/;
- a GGUF file (llama.cpp, Ollama): shape, tensors and tokenizer in one file;
- a bare weights file (.safetensors, .pth, .pt, .bin): tensors without shape or tokenizer.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pipeline.errors import UserError
from pipeline.record import RunRecord


class Layout(Enum):
    LIGHTNING = "a Lightning checkpoint"
    HF = "a Hugging Face directory"
    GGUF = "a GGUF file"
    WEIGHTS = "a weights file"


def detect(path: str | Path) -> tuple[Layout, Path]:
    """The layout of `path`, and the file or folder that holds it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(
            f"{path} does not exist. Pass a run folder, a .ckpt, an export folder, or a "
            "weights file."
        )
    if path.is_dir():
        if (path / "config.json").is_file():
            return Layout.HF, path
        if (path / "export" / "hf" / "config.json").is_file() and not (
            path / "checkpoints"
        ).is_dir():
            return Layout.HF, path / "export" / "hf"
        if RunRecord.read(path) is None and not (path / "checkpoints").is_dir():
            raise UserError(_not_readable(path))
        return Layout.LIGHTNING, run_checkpoint(path)
    if path.suffix == ".ckpt":
        return Layout.LIGHTNING, path
    if path.suffix == ".gguf":
        return Layout.GGUF, path
    return Layout.WEIGHTS, path


def run_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run folder stands for: its best one, else last.ckpt."""
    record = RunRecord.read(run_dir)
    best = record.paths.best_checkpoint if record else None
    if best and Path(best).is_file():
        return Path(best)
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    raise UserError(
        f"{run_dir} looks like a run folder but holds no checkpoint (checkpoints/last.ckpt). "
        "Did its training finish? Pass a .ckpt or an export directory instead."
    )


def _not_readable(folder: Path) -> str:
    """Why a folder that is neither a run folder nor a Hugging Face directory cannot be read."""
    found = (
        "an ONNX export (model.onnx), which runs in onnxruntime"
        if (folder / "model.onnx").is_file()
        else "neither"
    )
    return (
        f"{folder} is not a folder this pipeline reads ({found}). Pass a run folder (with "
        "run.json or checkpoints/), a .ckpt, a Hugging Face folder (config.json and weights, "
        "such as <run>/export/hf or export/merged), a .gguf file, or a weights file "
        "(.safetensors, .pth)."
    )
