"""Evaluate a trained model on a data split:

    python -m pipeline.evaluate ckpt=<run folder|.ckpt|export dir> [split=test] [data=... data.path=...]

Without data overrides on the command line, the data settings recorded in the checkpoint are
used (same file, same seed, so the same split); the tokenizer and labels always come from it.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.cli import hydra_command
from pipeline.config import AppConfig, DataConfig


def data_config(cfg: AppConfig, recorded: dict, overrides: list[str]) -> tuple[DataConfig, int]:
    """The command line's data settings if it overrides any, else the recorded run's."""
    if recorded.get("data") and not any(o.lstrip("+~").startswith("data") for o in overrides):
        return DataConfig.model_validate(recorded["data"]), recorded.get("seed", cfg.seed)
    return cfg.data, cfg.seed


def evaluate(trained, data: DataConfig, seed: int, split: str, cfg: AppConfig) -> dict[str, float]:
    import pytorch_lightning as pl

    from pipeline.data import TextDataModule, build_data
    from pipeline.errors import UserError
    from pipeline.module import GPTLightningModule
    from pipeline.runner import check_devices

    check_devices(cfg)
    if trained.tokenizer is None:
        raise UserError(
            "The checkpoint has no tokenizer, so its texts cannot be encoded as it was trained. "
            "Evaluate a run folder or .ckpt of this pipeline, or an export folder with its "
            "tokenizer files."
        )
    if (data.task == "causal_lm") != trained.model.is_lm:
        raise UserError(
            f"The checkpoint is a {trained.task} model but data.task={data.task}. "
            f"Pass data settings for a {trained.task} data set."
        )
    bundle = build_data(data, seed, trained.tokenizer, trained.label_names or None)
    if not bundle.splits[split].ids:
        raise UserError(f"The {split} split is empty. Choose split=train, val or test.")
    # Lightning's test loop runs whichever split was asked for.
    bundle.splits["test"] = bundle.splits[split]
    batch = cfg.optim.eval_batch_size or cfg.optim.batch_size
    datamodule = TextDataModule(bundle, batch, batch, seed, data.num_workers)
    model = trained.model
    if cfg.sparsity.accelerate:
        model = _semi_structured(trained)
    module = GPTLightningModule(model, cfg.optim)
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    results = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    return {k.replace("test/", f"{split}/"): round(float(v), 6) for k, v in results.items()}


def _semi_structured(trained):
    """The model in fp16 on the GPU with its 2:4 layers on sparse tensor cores."""
    from pipeline.errors import UserError
    from pipeline.sparsity.accelerate import accelerated

    if not trained.masks:
        raise UserError(
            "sparsity.accelerate=true needs a model pruned to 2:4 by this pipeline (its masks "
            "name the 2:4 layers), and this checkpoint has no sparsity masks. Evaluate a "
            "checkpoint of a sparsity=nm_2_4 run."
        )
    return accelerated(trained.model, [name.removesuffix(".weight") for name in trained.masks])


@hydra_command("evaluate")
def main(cfg: AppConfig) -> dict[str, float]:
    from hydra.core.hydra_config import HydraConfig

    from pipeline.files import write_json
    from pipeline.restore import load_trained

    trained = load_trained(cfg.ckpt)
    hydra_cfg = HydraConfig.get()
    data, seed = data_config(cfg, trained.config, list(hydra_cfg.overrides.task))
    metrics = evaluate(trained, data, seed, cfg.split, cfg)
    for key, value in metrics.items():
        print(f"{key:>12}: {value:.4f}")
    out = write_json(
        Path(hydra_cfg.runtime.output_dir) / "metrics.json",
        {"ckpt": str(Path(cfg.ckpt).resolve()), "data": data.path, "metrics": metrics},
    )
    print(f"written to {out}")
    return metrics


if __name__ == "__main__":
    main()
