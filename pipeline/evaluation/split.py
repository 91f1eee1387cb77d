"""A trained model evaluated on a split of a data set (python -m pipeline.evaluate, and the
benchmarks): the loss and accuracy and F1 or perplexity that training's test loop reports, in
a plain torch loop (no Lightning), and each example's output (a classifier's label and
probabilities; an instruct model's answer, scored, see answers.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.assembly.devices import autocast, check_devices, device_of
from pipeline.assembly.trained import Trained
from pipeline.config.data import DataConfig
from pipeline.config.train import TrainConfig
from pipeline.data.arrays import TokenizedSplit
from pipeline.data.bundle import SplitSource
from pipeline.data.loader import IGNORE_INDEX, split_loader
from pipeline.data.preparation import build_data
from pipeline.errors import UserError
from pipeline.evaluation.interrupt import StopOnSignal
from pipeline.evaluation.metrics import SplitMetrics
from pipeline.losses import classification_loss, lm_loss, predicted
from pipeline.model.heads import label_probabilities


@dataclass
class Evaluation:
    metrics: dict[str, float]
    source: SplitSource | None = None
    """The evaluated split's file, digest and size."""
    rows: list[dict] = field(default_factory=list)
    """One row per example: its output next to the reference."""


def data_config(cfg: TrainConfig, recorded: dict, overrides: list[str]) -> tuple[DataConfig, int]:
    """The command line's data settings if it overrides any, else the recorded run's."""
    if recorded.get("data") and not any(o.lstrip("+~").startswith("data") for o in overrides):
        data = DataConfig.model_validate(recorded["data"])
        keys = ("path", "val_path", "test_path")
        missing = [k for k in keys if getattr(data, k) and not Path(getattr(data, k)).is_file()]
        if missing and not data.synthetic_examples:
            given, here = recorded["data"][missing[0]], getattr(data, missing[0])
            raise UserError(
                f"The checkpoint records that it was trained on {given} (data.{missing[0]}), "
                f"which does not exist here ({here}): a path relative to where training ran, "
                "or a file moved since. Pass the data to evaluate on: data.path=... (with "
                "data=<preset> and its columns if they differ)."
            )
        return data, recorded.get("seed", cfg.seed)
    return cfg.data, cfg.seed


def evaluate(
    trained: Trained,
    data: DataConfig,
    seed: int,
    split: str,
    cfg: TrainConfig,
    max_examples: int | None = None,
    stop: StopOnSignal | None = None,
) -> Evaluation:
    """Loss, and accuracy and F1 or perplexity, over `split` (its first `max_examples`);
    `stop` ends it between two batches."""
    check_devices(cfg)
    if trained.tokenizer is None:
        raise UserError(
            "The checkpoint has no tokenizer, so its texts cannot be encoded as it was trained. "
            "Evaluate a run folder or .ckpt of this pipeline, or an export folder with its "
            "tokenizer files."
        )
    if (data.task == "classification") == trained.model.is_lm:
        raise UserError(
            f"The checkpoint is a {trained.task} model but data.task={data.task}. "
            f"Pass data settings for a {trained.task} data set."
        )
    bundle = build_data(data, seed, trained.tokenizer, trained.label_names or None)
    examples = bundle.splits[split]
    if not examples.ids:
        raise UserError(f"The {split} split is empty. Choose split=train, val or test.")
    if max_examples is not None:
        bundle.splits[split] = examples = examples.head(max_examples)
    model, device = trained.model, device_of(cfg.trainer.accelerator)
    if cfg.sparsity.accelerate:
        model, device = _semi_structured(trained), torch.device("cuda")
    batch_size = cfg.optim.eval_batch_size or cfg.optim.batch_size
    loader = split_loader(bundle, split, batch_size, seed, data.num_workers)
    model = model.to(device).eval()
    found = _loop(model, loader, device, cfg.trainer.precision, stop)
    metrics = {f"{split}/{k}": round(v, 6) for k, v in found.items()}
    evaluation = Evaluation(metrics, bundle.sources.get(split))
    if data.task == "classification":
        evaluation.rows = _labelled(trained, model, examples, device)
    return evaluation


@torch.no_grad()
def _loop(
    model, loader, device: torch.device, precision: str, stop: StopOnSignal | None
) -> dict[str, float]:
    metrics = SplitMetrics(model.is_lm, max(model.n_outputs or 0, 2))
    for i, batch in enumerate(loader):
        if stop:
            stop.check(f"{i} of {len(loader)} batches of the split scored, nothing written")
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with autocast(device, precision):
            logits = model(batch["input_ids"], position_ids=batch.get("position_ids"))
            if model.is_lm:
                n_trained = int((batch["targets"] != IGNORE_INDEX).sum())
                metrics.update(lm_loss(logits, batch["targets"]), n_trained)
                continue
            pooled = model.pooled(logits, batch["lengths"]).float()
        labels = batch["labels"]
        loss = classification_loss(pooled, labels)
        metrics.update(loss, labels.shape[0], predicted(pooled), labels)
    return metrics.compute()


@torch.no_grad()
def _labelled(trained: Trained, model, split: TokenizedSplit, device: torch.device) -> list[dict]:
    """{text, label, predicted, p(label) for each label} per example, one at a time (no
    padding to reason about; test splits are small)."""
    names = trained.label_names
    rows = []
    labels = [] if split.labels is None else split.labels.tolist()
    for ids, label in zip(split.ids, labels, strict=True):
        input_ids = torch.as_tensor(ids.astype("int64"), device=device)[None]
        lengths = torch.tensor([len(ids)], device=device)
        probs = label_probabilities(model.pooled(model(input_ids), lengths)[0].float()).tolist()
        row = {"text": trained.tokenizer.decode(ids.tolist()), "label": names[label]}
        row["predicted"] = names[max(range(len(probs)), key=probs.__getitem__)]
        rows.append(row | {f"p({name})": round(p, 6) for name, p in zip(names, probs, strict=True)})
    return rows


def _semi_structured(trained: Trained):
    """The model in fp16 on the GPU with its 2:4 layers on sparse tensor cores."""
    from pipeline.sparsity.accelerate import accelerated

    if not trained.masks:
        raise UserError(
            "sparsity.accelerate=true needs a model pruned to 2:4 by this pipeline (its masks "
            "name the 2:4 layers), and this checkpoint has no sparsity masks. Evaluate a "
            "checkpoint of a sparsity=nm_2_4 run."
        )
    return accelerated(trained.model, [name.removesuffix(".weight") for name in trained.masks])
