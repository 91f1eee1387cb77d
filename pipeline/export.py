"""Export a trained model in the layouts other tools read (pipeline/formats/):

python -m pipeline.export ckpt=<run folder|.ckpt|export dir> export.formats=[hf,weights]
"""

from __future__ import annotations

from pathlib import Path

from pipeline.cli.app import hydra_command
from pipeline.config.commands import ExportCommandConfig
from pipeline.errors import UserError


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
def main(cfg: ExportCommandConfig) -> dict[str, Path]:
    from pipeline.assembly.restore import load_trained
    from pipeline.formats import export_trained

    ckpt = Path(cfg.ckpt)
    out_dir = Path(cfg.export.dir) if cfg.export.dir else default_export_dir(ckpt)
    e = cfg.export
    trained = load_trained(ckpt)
    written = export_trained(trained, e.formats, out_dir, e.max_shard_bytes, e.gguf.types)
    for fmt, folder in written.items():
        print(f"{fmt:>8}: {folder}")
    return written


if __name__ == "__main__":
    main()
