"""A trained model written in the layouts other tools read, one module per format:
hf.py (export/hf/ and export/merged/), adapter.py, onnx.py, gguf.py (with modelfile.py);
`weights` is a plain state_dict.

Every file is written under a temporary name and renamed, so an interrupted export never leaves
a file that looks complete.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from pipeline.assembly.trained import Trained
from pipeline.config.model import check_exportable
from pipeline.errors import UserError
from pipeline.files import atomic_write
from pipeline.lora import is_lora, plain_copy
from pipeline.model.contract import Model
from pipeline.weights.io import MAX_SHARD_BYTES


def export_trained(
    trained: Trained,
    formats: Iterable[str],
    out_dir: Path,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    gguf_types: Iterable[str] = ("f16",),
) -> dict[str, Path]:
    """Write each format under out_dir/<format>/; returns {format: folder}.

    With LoRA adapters: `hf` holds the base weights (what the `adapter` applies to), `merged`
    the weights with LoRA merged in; `weights`, `onnx` and `gguf` are written from the merged
    model.
    """
    from pipeline.formats.adapter import save_adapter
    from pipeline.formats.hf import save_hf_layout
    from pipeline.formats.onnx import export_onnx

    model = trained.model.eval()
    attention = model.metadata().get("gpt_config", {}).get("attention") or {}
    check_exportable(attention.get("pattern", "dense"), list(formats))
    lora = is_lora(model)
    merged = functools.cache(lambda: _merged(model, trained.masks) if lora else model)
    base = functools.cache(lambda: plain_copy(model, merge=False) if lora else model)

    def hf(m: Model, target: Path) -> None:
        save_hf_layout(m, target, trained.tokenizer, trained.label_names, max_shard_bytes)

    written: dict[str, Path] = {}
    # hf before adapter, so the adapter export reuses the base just written.
    for fmt in sorted(formats, key=lambda f: f == "adapter"):
        target = out_dir / fmt
        if fmt in ("adapter", "merged") and not lora:
            raise UserError(
                f"export.formats includes {fmt}, but this model has no LoRA adapters. "
                "Choose hf, weights or onnx."
            )
        if fmt == "hf":
            hf(base(), target)
        elif fmt == "merged":
            hf(merged(), target)
        elif fmt == "adapter":
            with tempfile.TemporaryDirectory() as tmp:
                base_dir = written.get("hf") or Path(tmp)
                if "hf" not in written:
                    hf(base(), base_dir)
                save_adapter(model, target, base_dir)
        elif fmt == "weights":
            # detach() keeps a tied head and embedding one tensor, saved once.
            state = {k: v.detach().cpu() for k, v in merged().state_dict().items()}
            atomic_write(target / "model.pth", lambda tmp, s=state: torch.save(s, tmp))
        elif fmt == "onnx":
            atomic_write(target / "model.onnx", lambda tmp: export_onnx(merged(), tmp))
        elif fmt == "gguf":
            save_gguf_and_modelfile(merged(), trained.tokenizer, target, list(gguf_types))
        written[fmt] = target
    return written


def save_gguf_and_modelfile(model: Model, tokenizer, directory: Path, types: list[str]) -> None:
    """model-<type>.gguf for each type, and a Modelfile for the first."""
    from pipeline.files import write_text
    from pipeline.formats.gguf import save_gguf
    from pipeline.formats.modelfile import modelfile

    (first, *_) = save_gguf(model, tokenizer, directory, types)
    write_text(directory / "Modelfile", modelfile(first.name, tokenizer, model.context_length))


def _merged(model: Model, masks: dict[str, torch.Tensor] | None) -> Model:
    """LoRA merged into the weights, re-masked: (W + BA) * M, or the merge would fill the
    pruned entries with the dense update."""
    merged = plain_copy(model, merge=True)
    if masks:
        from pipeline.sparsity.targets import apply_masks

        apply_masks(merged, masks)
    return merged
