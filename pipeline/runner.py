"""One training run: build data and model, fit and test with Lightning, export, record in MLflow.

The run folder and the MLflow run point at each other (tag `run_dir`, run.json's `run_id`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from pipeline import sweep_stop, tracking
from pipeline.config import AppConfig, LoggerConfig
from pipeline.data import Collator, DataBundle, TextDataModule, build_data
from pipeline.distributed import global_rank, weights_digest
from pipeline.errors import Interrupted, TrialPruned, UserError
from pipeline.export import export_trained
from pipeline.faults import (
    AtomicCheckpointIO,
    PublishAfterMetrics,
    StopOnNonFiniteLoss,
    StopOnSignal,
)
from pipeline.model.gpt import GPTConfig, GPTModel
from pipeline.model.weights import load_into
from pipeline.module import GPTLightningModule
from pipeline.progress import ProgressBar
from pipeline.provenance import data_digests, redact, redact_all
from pipeline.restore import CHECKPOINT_KEY, Trained, has_tokenizer, load_pretrained
from pipeline.tokenizer import TextTokenizer
from pipeline.trial import search_callbacks


def gpt_config(cfg: AppConfig, bundle: DataBundle, pretrained: GPTConfig | None) -> GPTConfig:
    """The model's shape: the preset and overrides, or the pretrained model's; the head from
    the task; the vocabulary from the tokenizer unless given."""
    m = cfg.model
    if pretrained is not None:
        shape = replace(pretrained, drop_rate=m.drop_rate)
    else:
        shape = GPTConfig(
            **m.model_dump(exclude={"name", "arch", "init_from", "vocab_size"}),
            vocab_size=m.vocab_size or bundle.tokenizer.vocab_size,
        )
    if cfg.data.max_length > shape.context_length:
        raise UserError(
            f"data.max_length={cfg.data.max_length} is longer than the model's context "
            f"({shape.context_length} tokens). Lower data.max_length."
        )
    if shape.vocab_size < bundle.tokenizer.vocab_size:
        raise UserError(
            f"model.vocab_size={shape.vocab_size} is smaller than the tokenizer's vocabulary "
            f"({bundle.tokenizer.vocab_size} tokens). Set model.vocab_size=null to size it "
            "from the tokenizer, or lower data.tokenizer.vocab_size."
        )
    return replace(shape, n_outputs=bundle.n_outputs)


class _CheckpointExtras(pl.Callback):
    """What our checkpoints carry beyond Lightning's:
    - the model shape, tokenizer and labels, so a .ckpt alone serves evaluate/generate/export;
    - the random number generators' states (dropout), so a resumed run continues exactly;
    - for LoRA on pretrained weights, only the trainable tensors (the base file has the rest).
    """

    def __init__(self, trained: Trained):
        self.trained = trained

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = self.trained.checkpoint_metadata()
        checkpoint[RNG_KEY] = rng_states()
        if self.trained.base is not None:
            model = self.trained.model
            trainable = {f"model.{n}" for n, p in model.named_parameters() if p.requires_grad}
            state = checkpoint["state_dict"]
            checkpoint["state_dict"] = {k: v for k, v in state.items() if k in trainable}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if RNG_KEY in checkpoint:
            set_rng_states(checkpoint[RNG_KEY])


RNG_KEY = "rng_states"


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch generator states as tensors and lists (weights_only-loadable)."""
    import random

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
    import random

    import numpy as np

    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def build_trainer(
    cfg: AppConfig,
    run_dir: Path,
    logger: Any,
    trained: Trained,
    has_val: bool,
    extra: list[pl.Callback],
) -> tuple[pl.Trainer, ModelCheckpoint]:
    t, c = cfg.trainer, cfg.trainer.checkpoint
    # A pruning schedule makes earlier, denser checkpoints look best on validation: with
    # sparsity the run's result is its last checkpoint.
    monitor = c.monitor if has_val and not cfg.sparsity.enabled else None
    checkpoint_dir = run_dir / "checkpoints"
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="epoch={epoch}-step={step}",
        auto_insert_metric_name=False,
        monitor=monitor,
        mode=c.mode,
        # Without a monitor Lightning keeps the latest one, or every one (-1).
        save_top_k=c.save_top_k if monitor or c.save_top_k == -1 else 1,
        save_last=c.save_last,
        # Overwrite, never last-v1.ckpt: last.ckpt is the newest state, whoever wrote it.
        enable_version_counter=False,
    )
    io = AtomicCheckpointIO(before_publish=logger.flush if logger is not None else None)
    # Lightning runs checkpoint callbacks after the others: a NaN loss stops before a save.
    callbacks: list[pl.Callback] = [
        checkpoint,
        PublishAfterMetrics(io),
        _CheckpointExtras(trained),
        StopOnNonFiniteLoss(checkpoint_dir),
        *extra,
    ]
    if c.every_n_train_steps and c.save_last:
        # A second callback only for last.ckpt: the first one's top-k needs validation metrics.
        callbacks.append(
            ModelCheckpoint(
                dirpath=checkpoint_dir,
                save_top_k=0,
                save_last=True,
                every_n_train_steps=c.every_n_train_steps,
                enable_version_counter=False,
            )
        )
    callbacks += search_callbacks()
    if t.enable_progress_bar:
        callbacks.append(ProgressBar())
    try:
        trainer = pl.Trainer(
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=t.strategy,
            precision=t.precision,
            max_epochs=t.max_epochs,
            max_steps=t.max_steps,
            accumulate_grad_batches=cfg.optim.accumulate_grad_batches,
            gradient_clip_val=cfg.optim.gradient_clip_val,
            val_check_interval=t.val_check_interval,
            limit_val_batches=None if has_val else 0,
            num_sanity_val_steps=t.num_sanity_val_steps if has_val else 0,
            log_every_n_steps=t.log_every_n_steps,
            deterministic=t.deterministic,
            enable_progress_bar=t.enable_progress_bar,
            logger=logger if logger is not None else False,
            callbacks=callbacks,
            plugins=[io],
            default_root_dir=run_dir,
        )
    except (MisconfigurationException, ValueError) as exc:
        raise UserError(
            f"Lightning refused the trainer settings: {str(exc).rstrip('.')}. Check trainer.strategy, "
            "trainer.devices and trainer.precision (python -m pipeline.doctor shows what this "
            "machine supports)."
        ) from None
    return trainer, checkpoint


def check_devices(cfg: AppConfig) -> None:
    """Refuse a GPU request on a machine without one before any data or run is created."""
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={cfg.trainer.accelerator} but this machine has no CUDA "
            "device. Use trainer=cpu (or trainer.accelerator=auto); python -m pipeline.doctor "
            "shows what this machine offers."
        )
    if cfg.sparsity.accelerate:
        from pipeline.sparsity.accelerate import check_semi_structured

        check_semi_structured()


def build_model(cfg: AppConfig) -> tuple[Trained, DataBundle]:
    """Data, tokenizer and the model (pretrained weights loaded when model.init_from is set),
    with LoRA adapters when a lora preset is chosen. The layers sparsity targets are resolved
    first, on the model without adapters (`Trained.sparse_layers`)."""
    trained, bundle = build_hf_model(cfg) if cfg.model.arch == "hf" else build_gpt_model(cfg)
    if cfg.sparsity.active:
        from pipeline.sparsity.targets import target_layers

        trained.sparse_layers = target_layers(trained.model, cfg.sparsity.target_modules)
    if cfg.lora.enabled:
        from pipeline.lora import apply_lora

        trained.model = apply_lora(trained.model, cfg.lora)
        trained.lora = cfg.lora.model_dump(mode="json")
        if cfg.model.init_from:
            trained.base = str(Path(cfg.model.init_from).expanduser().resolve())
    return trained, bundle


def build_gpt_model(cfg: AppConfig) -> tuple[Trained, DataBundle]:
    pretrained = load_pretrained(cfg.model.init_from) if cfg.model.init_from else None
    tokenizer = pretrained.tokenizer if pretrained else None
    if cfg.data.tokenizer.path:
        tokenizer = TextTokenizer.load(cfg.data.tokenizer.path)
    bundle = build_data(cfg.data, cfg.seed, tokenizer)
    model = GPTModel(gpt_config(cfg, bundle, pretrained.shape if pretrained else None))
    if pretrained is not None:
        # A classifier gets a new head sized from its labels; the pretrained head is dropped.
        load_into(model, pretrained.state, str(cfg.model.init_from), new_head=not model.cfg.is_lm)
    return Trained(model, bundle.tokenizer, bundle.label_names), bundle


def build_hf_model(cfg: AppConfig) -> tuple[Trained, DataBundle]:
    """A Hugging Face model directory with its own tokenizer (model=hf)."""
    from pipeline.model.hf import HFModel

    directory = Path(cfg.model.init_from).expanduser()
    tokenizer_path = cfg.data.tokenizer.path or (directory if has_tokenizer(directory) else None)
    if tokenizer_path is None:
        raise UserError(
            f"{directory} has no tokenizer (tokenizer.json, or vocab.json + merges.txt), and a "
            "pretrained model needs the tokenizer it was trained with. Set "
            "data.tokenizer.path=<its tokenizer>."
        )
    bundle = build_data(cfg.data, cfg.seed, TextTokenizer.load(tokenizer_path))
    model = HFModel.from_pretrained(
        directory, bundle.n_outputs, bundle.tokenizer.pad_id, bundle.label_names
    )
    if cfg.data.max_length > model.context_length:
        raise UserError(
            f"data.max_length={cfg.data.max_length} is longer than the model's context "
            f"({model.context_length} tokens). Lower data.max_length."
        )
    return Trained(model, bundle.tokenizer, bundle.label_names), bundle


def _final_metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {
        k: round(float(v), 6)
        for k, v in sorted(trainer.callback_metrics.items())
        if k.startswith(("val/", "test/")) or k == "train/loss_epoch"
    }


def train(cfg: AppConfig, config_dict: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Run one experiment in `run_dir` (or continue the one cfg.resume names); return what
    run.json records. SIGTERM and Ctrl-C stop it with a checkpoint and the run KILLED."""
    check_devices(cfg)
    outputs = Path(cfg.paths.outputs)
    resume = None
    if cfg.resume:
        resume = locate_resume(cfg.resume, outputs, cfg.logger.experiment_name, cfg.logger)
        run_dir = resume.run_dir
    with StopOnSignal(run_dir / "checkpoints", sweep_stop.marker()) as stop:
        return _train(cfg, config_dict, run_dir, resume, stop)


def _train(
    cfg: AppConfig,
    config_dict: dict[str, Any],
    run_dir: Path,
    resume: Resume | None,
    stop: StopOnSignal,
) -> dict[str, Any]:
    started = time.time()
    outputs = Path(cfg.paths.outputs)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    trained, bundle = build_model(cfg)
    # Checkpoints carry the config and may be uploaded: no credentials in it.
    config_dict = redact_all(config_dict)
    trained.config = config_dict
    n_params = sum(p.numel() for p in trained.model.parameters())
    n_trainable = sum(p.numel() for p in trained.model.parameters() if p.requires_grad)
    source = f"from {cfg.model.init_from}" if cfg.model.init_from else cfg.model.name
    print(
        f"Model {source}: {n_params:,} parameters ({trained.task}); trainable "
        f"{n_trainable:,} ({n_trainable / n_params:.2%})."
    )
    if resume:
        print(f"Resuming {run_dir} from {resume.checkpoint.name}.")
    trained.tokenizer.save(run_dir)
    # Every rank of a data-parallel run gets here; rank 0 alone tracks, exports and writes
    # run.json, the others leave run.rank<N>.json.
    rank = global_rank(cfg.trainer.devices)
    record_name = "run.json" if rank == 0 else f"run.rank{rank}.json"

    tracked, logger = None, None
    if cfg.logger.name == "mlflow" and rank == 0:
        if resume and resume.record.get("run_id"):
            tracked = tracking.reopen_run(cfg.logger, outputs, resume.record["run_id"])
        else:
            digests = data_digests(cfg.data)
            tracked = tracking.start_run(cfg.logger, outputs, config_dict, run_dir, digests)
        # Steps logged before the interruption are not logged a second time.
        logger = tracking.BatchedMLflowLogger(tracked, skip_through=tracking.last_step(tracked))
    record: dict[str, Any] = {
        "run_id": tracked.run_id if tracked else None,
        "experiment_name": cfg.logger.experiment_name,
        "experiment_id": tracked.experiment_id if tracked else None,
        "tracking_uri": redact(tracked.tracking_uri) if tracked else None,
        "status": "RUNNING",
        "task": trained.task,
        "num_parameters": n_params,
        "trainable_parameters": n_trainable,
        "metrics": {},
        "paths": {"run_dir": str(run_dir)},
        "resumed": (resume.record.get("resumed", 0) + 1) if resume else 0,
    }
    tracking.write_run_json(run_dir, record, record_name)
    failed, pruned = True, False
    try:
        has_val = bool(bundle.splits["val"].ids)
        sparsity = sparsity_callback(cfg, trained, bundle, run_dir)
        extra = [stop, sparsity] if sparsity else [stop]
        trainer, checkpoint = build_trainer(cfg, run_dir, logger, trained, has_val, extra)
        penalty = sparsity.pruner.penalty if sparsity and cfg.sparsity.l1_lambda else None
        module = GPTLightningModule(trained.model, cfg.optim, penalty)
        # LoRA checkpoints on pretrained weights hold only what trains (see restore.py).
        module.strict_loading = trained.base is None
        if cfg.trainer.compile:
            trained.model.compile()
        datamodule = TextDataModule(
            bundle,
            cfg.optim.batch_size,
            cfg.optim.eval_batch_size or cfg.optim.batch_size,
            cfg.seed,
            cfg.data.num_workers,
        )
        if resume:
            datamodule.resume_mid_epoch(batches_done(resume.checkpoint))
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume.checkpoint if resume else None)
        stop.agree(trainer)
        if stop.signum is not None:
            # The signal came during the last validation: training is over, the run is not.
            raise stop.error()
        if has_val and not any(k.startswith("val/") for k in trainer.callback_metrics):
            # max_steps ended the run before the first scheduled validation.
            trainer.validate(module, datamodule=datamodule, verbose=False)
        fit_metrics = _final_metrics(trainer)
        best = checkpoint.best_model_path or None
        if best:
            # Test and export the best checkpoint's weights, not the last step's.
            state = torch.load(best, map_location="cpu", weights_only=True, mmap=True)
            state = state["state_dict"]
            module.load_state_dict(state, strict=module.strict_loading)
        if sparsity:
            trained.masks = sparsity.pruner.state() or None
            record["sparsity"] = sparsity.report
        if bundle.splits["test"].ids:
            trainer.test(module, datamodule=datamodule, verbose=False)
        record["metrics"] = {**fit_metrics, **_final_metrics(trainer)}
        export_dir = Path(cfg.export.dir) if cfg.export.dir else run_dir / "export"
        formats = list(cfg.export.formats)
        if cfg.lora.enabled:
            # A LoRA run always yields its adapter and the merged model.
            formats += [f for f in ("adapter", "merged") if f not in formats]
        exports = {}
        if rank == 0:
            exports = export_trained(trained, formats, export_dir, cfg.export.max_shard_bytes)
        if trainer.world_size > 1 and cfg.trainer.strategy.startswith("ddp"):
            # Replicas that trained in step hold the same weights: run.rank<N>.json shows it.
            record.update(world_size=trainer.world_size, weights_sha256=weights_digest(module))
        last = run_dir / "checkpoints" / "last.ckpt"
        record["paths"].update(
            best_checkpoint=best,
            last_checkpoint=str(last) if last.is_file() else None,
            exports={fmt: str(path) for fmt, path in exports.items()},
        )
        failed = False
    except BaseException as exc:
        if stop.signum is not None:
            # Lightning's own SIGTERM handling ends fit with SystemExit; report it as ours.
            killed = exc if isinstance(exc, Interrupted) else stop.error()
            record["error"] = str(killed)
            raise killed from None
        record["error"] = describe_failure(exc)
        pruned = isinstance(exc, TrialPruned)
        raise
    finally:
        killed = failed and stop.signum is not None
        record["status"] = "PRUNED" if pruned else tracking.run_status(failed, killed=killed)
        record["duration_s"] = round(time.time() - started, 1)
        if tracked:
            record["ui_url"] = tracked.ui_url()
        tracking.write_run_json(run_dir, record, record_name)
        if tracked:
            try:
                logger.finalize(record["status"])
                artifacts = {"": run_dir / "run.json"}
                if not failed:
                    artifacts.update(_artifacts(cfg, record))
                tracking.finish_run(
                    tracked,
                    tracking.mlflow_status(record["status"]),
                    artifacts,
                    {
                        "model.num_parameters": n_params,
                        "model.trainable_parameters": n_trainable,
                        "model.trainable_fraction": f"{n_trainable / n_params:.6f}",
                    },
                    tracking.failure_tags(record) if failed else None,
                )
            except Exception as exc:
                if not failed:
                    raise
                # The training error is the one to report; the tracking one only follows it.
                print(f"warning: could not close the MLflow run: {exc}", file=sys.stderr)
    return record


@dataclass
class Resume:
    run_dir: Path
    checkpoint: Path
    record: dict[str, Any]


def locate_resume(
    resume: str, outputs: Path, experiment: str, logger: LoggerConfig | None = None
) -> Resume:
    """resume=auto (the newest unfinished run of the experiment), a run folder, an MLflow run
    id (the run's `run_dir` tag), or a .ckpt."""
    if resume == "auto":
        unfinished = [
            p.parent
            for p in (outputs / "runs" / experiment).glob("*/*/run.json")
            if json.loads(p.read_text()).get("status") != "FINISHED"
            and (p.parent / "checkpoints" / "last.ckpt").is_file()
        ]
        if not unfinished:
            raise UserError(
                f"resume=auto found no unfinished run with a checkpoint under "
                f"{outputs / 'runs' / experiment}. Pass resume=<run folder or .ckpt>."
            )
        path = max(unfinished, key=lambda p: (p / "run.json").stat().st_mtime)
    elif tracking.is_run_id(resume) and not Path(resume).exists() and logger is not None:
        path = tracking.run_dir_of(logger, outputs, resume)
    else:
        path = Path(resume).expanduser().resolve()
    if path.is_dir():
        run_dir, checkpoint = path, path / "checkpoints" / "last.ckpt"
    else:
        run_dir, checkpoint = path.parent.parent, path
    if not checkpoint.is_file() or checkpoint.parent.name != "checkpoints":
        raise UserError(
            f"resume={resume}: no checkpoint of a run folder at {checkpoint}. Pass a run folder "
            "that has checkpoints/last.ckpt, or a .ckpt inside a run's checkpoints/ folder."
        )
    record_file = run_dir / "run.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    return Resume(run_dir, checkpoint, record)


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, UserError | TrialPruned):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return "interrupted before the run finished"
    return f"{type(exc).__name__}: {exc}"


def batches_done(checkpoint: Path) -> int:
    """How many training batches the checkpoint's epoch had finished when it was saved."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"]


def sparsity_callback(cfg: AppConfig, trained: Trained, bundle: DataBundle, run_dir: Path):
    """The callback that prunes and measures, when the sparsity config asks for either."""
    if not cfg.sparsity.active:
        return None
    from pipeline.sparsity.callback import SparsityCallback

    calibration = None
    if cfg.sparsity.method == "wanda":
        calibration = calibration_batch(bundle, cfg.sparsity.calibration_samples, cfg.seed)
    return SparsityCallback(
        cfg.sparsity, trained.model, trained.sparse_layers, calibration, run_dir / "sparsity"
    )


def calibration_batch(bundle: DataBundle, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n training examples drawn with the run's seed (the same on every rank): ids, lengths."""
    ids = bundle.splits["train"].ids
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))
    batch = Collator("causal_lm", bundle.tokenizer.pad_id, False)(
        [(ids[i], None) for i in order[:n].tolist()]
    )
    return batch["input_ids"], batch["lengths"]


def _artifacts(cfg: AppConfig, record: dict[str, Any]) -> dict[str, Path]:
    paths = record["paths"]
    artifacts = {f"export/{fmt}": Path(p) for fmt, p in paths["exports"].items()}
    report = Path(paths["run_dir"]) / "sparsity"
    if report.is_dir():
        artifacts["sparsity"] = report
    chosen = {"best": paths["best_checkpoint"], "last": paths["last_checkpoint"]}.get(
        cfg.logger.log_checkpoint
    )
    if chosen:
        artifacts["checkpoints"] = Path(chosen)
    return artifacts


def print_summary(record: dict[str, Any], make_ui_serves_it: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Run {record['status']}", show_header=False, title_justify="left")
    for key, value in record["metrics"].items():
        table.add_row(key, f"{value:.4f}")
    table.add_row("run folder", record["paths"]["run_dir"])
    if record["run_id"]:
        table.add_row("MLflow run", record["run_id"])
        ui = (
            "make ui"
            if make_ui_serves_it
            else f"mlflow ui --backend-store-uri {record['tracking_uri']}"
        )
        if record["tracking_uri"].startswith("http"):
            ui = "open"
    console = Console()
    console.print(table)
    if record["run_id"]:
        console.print(f"MLflow UI: {ui}  ->  {record['ui_url']}", soft_wrap=True)
