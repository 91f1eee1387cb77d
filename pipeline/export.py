"""Export a trained model in the layouts other tools read.

python -m pipeline.export ckpt=<run folder|.ckpt|export dir> export.formats=[hf,weights]
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pipeline.cli import hydra_command
from pipeline.config import AppConfig
from pipeline.errors import UserError


def export_trained(trained, formats: Iterable[str], out_dir: Path) -> dict[str, Path]:
    """Write each format under out_dir/<format>/; returns {format: folder}."""
    import torch

    from pipeline.files import atomic_write
    from pipeline.model.weights import save_hf

    written: dict[str, Path] = {}
    for fmt in formats:
        target = out_dir / fmt
        if fmt == "hf":
            save_hf(trained.model, target, trained.tokenizer, trained.label_names)
        elif fmt == "weights":
            state = {k: v.detach().cpu().clone() for k, v in trained.model.state_dict().items()}
            atomic_write(target / "model.pth", lambda tmp, s=state: torch.save(s, tmp))
        written[fmt] = target
    return written


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
    written = export_trained(load_trained(ckpt), cfg.export.formats, out_dir)
    for fmt, folder in written.items():
        print(f"{fmt:>8}: {folder}")
    return written


if __name__ == "__main__":
    main()
