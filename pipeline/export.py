"""Export a trained model in the layouts other tools read.

python -m pipeline.export ckpt=<run folder|.ckpt|export dir> export.formats=[hf,weights]
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

from pipeline.cli import hydra_command
from pipeline.config import AppConfig
from pipeline.errors import UserError


def export_trained(
    trained, formats: Iterable[str], out_dir: Path, max_shard_bytes: int | None = None
) -> dict[str, Path]:
    """Write each format under out_dir/<format>/; returns {format: folder}.

    With LoRA adapters: `hf` holds the base weights (what the `adapter` applies to), `merged`
    the weights with LoRA merged in; `weights` and `onnx` are written from the merged model.
    Every file is written under a temporary name and renamed, so an interrupted export never
    leaves a file that looks complete.
    """
    import functools

    import torch

    from pipeline.files import atomic_write
    from pipeline.lora import is_lora, plain_copy, save_adapter
    from pipeline.model.weights import MAX_SHARD_BYTES

    max_shard_bytes = max_shard_bytes or MAX_SHARD_BYTES
    model = trained.model.eval()
    lora = is_lora(model)
    merged = functools.cache(lambda: _merged(model, trained.masks) if lora else model)
    base = functools.cache(lambda: plain_copy(model, merge=False) if lora else model)

    def save_hf_layout(m, target: Path) -> None:
        from pipeline.model.gpt import GPTModel
        from pipeline.model.weights import save_hf

        if isinstance(m, GPTModel):
            save_hf(m, target, trained.tokenizer, trained.label_names, max_shard_bytes)
        else:
            m.save(target, trained.tokenizer, max_shard_bytes)

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
            save_hf_layout(base(), target)
        elif fmt == "merged":
            save_hf_layout(merged(), target)
        elif fmt == "adapter":
            with tempfile.TemporaryDirectory() as tmp:
                base_dir = written.get("hf") or Path(tmp)
                if "hf" not in written:
                    save_hf_layout(base(), base_dir)
                save_adapter(model, target, base_dir)
        elif fmt == "weights":
            # detach() keeps a tied head and embedding one tensor, saved once.
            state = {k: v.detach().cpu() for k, v in merged().state_dict().items()}
            atomic_write(target / "model.pth", lambda tmp, s=state: torch.save(s, tmp))
        elif fmt == "onnx":
            atomic_write(target / "model.onnx", lambda tmp: export_onnx(merged(), tmp))
        written[fmt] = target
    return written


def _merged(model, masks):
    """LoRA merged into the weights, re-masked: (W + BA) * M, or the merge would fill the
    pruned entries with the dense update."""
    from pipeline.lora import plain_copy

    merged = plain_copy(model, merge=True)
    if masks:
        from pipeline.sparsity.targets import apply_masks

        apply_masks(merged, masks)
    return merged


def export_onnx(model, path: Path) -> None:
    """ONNX graph with inputs input_ids and attention_mask (batch and sequence axes dynamic).

    Output `logits`: (batch, tokens, vocab) for a language model; (batch, n_outputs) for a
    classifier, already pooled at each sequence's last real token.
    """
    import importlib.util

    import torch

    from pipeline.model.gpt import pool_last_token

    if importlib.util.find_spec("onnxscript") is None:
        raise UserError(
            "export.formats includes onnx, which needs the onnx and onnxscript packages. "
            "Install the project with its onnx extra: pip install -e '.[onnx]'."
        )

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            logits = self.model(input_ids, attention_mask)
            if self.model.is_lm:
                return logits
            if logits.dim() == 3:
                return pool_last_token(logits, attention_mask.sum(-1))
            return logits

    # The exporter warns about torchvision ops and shared axis names; neither concerns us.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("sequence", min=2, max=model.context_length)
    example = torch.ones(2, 8, dtype=torch.long)
    axes = {0: batch, 1: seq}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Graph().eval(),
            (example, torch.ones_like(example)),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": axes, "attention_mask": axes},
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def default_export_dir(ckpt: Path) -> Path:
    """<run folder>/export for a run folder or one of its checkpoints."""
    ckpt = ckpt.resolve()
    if ckpt.is_dir() and (ckpt / "checkpoints").is_dir():
        return ckpt / "export"
    if ckpt.suffix == ".ckpt" and ckpt.parent.name == "checkpoints":
        return ckpt.parent.parent / "export"
    raise UserError(
        f"Cannot tell which run {ckpt} belongs to, so there is no default export folder. "
        "Pass export.dir=<folder>."
    )


@hydra_command("export")
def main(cfg: AppConfig) -> dict[str, Path]:
    from pipeline.restore import load_trained

    ckpt = Path(cfg.ckpt)
    out_dir = Path(cfg.export.dir) if cfg.export.dir else default_export_dir(ckpt)
    written = export_trained(
        load_trained(ckpt), cfg.export.formats, out_dir, cfg.export.max_shard_bytes
    )
    for fmt, folder in written.items():
        print(f"{fmt:>8}: {folder}")
    return written


if __name__ == "__main__":
    main()
