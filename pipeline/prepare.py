"""Prepare a run's data into the cache ahead of time (what `axolotl preprocess` is to Axolotl):

    python -m pipeline.prepare [the overrides a run takes]
    python -m pipeline.prepare -m data.max_length=256,512    # each data setting a sweep uses

The data is read, tokenized and saved in data.cache_dir exactly as `python -m pipeline.train`
with the same overrides would do it, so that run, its resumes and a sweep's trials with these
data settings open it instead of preparing it. Nothing is trained or recorded.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.cli.app import discard_empty_run_dir, hydra_command
from pipeline.config.train import TrainConfig
from pipeline.errors import UserError


@hydra_command("config")
def main(cfg: TrainConfig) -> dict[str, int]:
    if cfg.data.cache_dir is None:
        raise UserError(
            "data.cache_dir=null prepares data in memory for each run, so there is no cache to "
            "fill. Set data.cache_dir=<folder> (the presets use outputs/data/cache)."
        )
    from pipeline.assembly.model import data_tokenizer
    from pipeline.data.preparation import build_data

    bundle = build_data(cfg.data, cfg.seed, data_tokenizer(cfg))
    _leave_no_run_folder(Path(cfg.paths.outputs))
    return {name: len(split) for name, split in bundle.splits.items()}


def _leave_no_run_folder(outputs: Path) -> None:
    """Hydra made a run folder for this command, which trains nothing: it goes, with the
    date and experiment folders above it that held only it."""
    from hydra.core.hydra_config import HydraConfig

    discard_empty_run_dir()
    folder = Path(HydraConfig.get().runtime.output_dir).parent
    while folder != outputs and outputs in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty
            return
        folder = folder.parent


if __name__ == "__main__":
    main()
