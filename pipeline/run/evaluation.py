"""A trained model evaluated on a split of a data set (python -m pipeline.evaluate, and the
benchmarks): the test loop's metrics, and each example's output (a classifier's label and
probabilities; an instruct model's answer, with exact match, token F1 and a judge's score)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch

from pipeline.build.trained import Trained
from pipeline.config.commands import EvaluateConfig
from pipeline.config.data import DataConfig
from pipeline.config.train import TrainConfig
from pipeline.data.bundle import SplitSource, TokenizedSplit, build_data
from pipeline.data.loader import TextDataModule
from pipeline.data.records import load_splits
from pipeline.errors import UserError
from pipeline.model.heads import label_probabilities
from pipeline.run.module import GPTLightningModule
from pipeline.run.trainer import check_devices


@dataclass
class Evaluation:
    metrics: dict[str, float]
    source: SplitSource | None = None
    """The evaluated split's file, digest and size."""
    rows: list[dict] = field(default_factory=list)
    """One row per example: its output next to the reference (with_outputs)."""


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
    trained: Trained, data: DataConfig, seed: int, split: str, cfg: TrainConfig
) -> Evaluation:
    """The test loop over `split` of the data: loss, and accuracy and F1 or perplexity."""
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
    metrics = {k.replace("test/", f"{split}/"): round(float(v), 6) for k, v in results.items()}
    evaluation = Evaluation(metrics, bundle.sources.get(split))
    if data.task == "classification":
        evaluation.rows = _labelled(trained, bundle.splits[split])
    return evaluation


def with_answers(
    evaluation: Evaluation, trained: Trained, data: DataConfig, seed: int, cfg: EvaluateConfig
) -> None:
    """An instruct model's answer to every example of the split, scored (and judged)."""
    from pipeline.run.answers import answer_all, scores

    conversations = load_splits(data, seed)[cfg.split].conversations
    rows = answer_all(trained, conversations, cfg.max_new_tokens)
    found = scores(rows)
    if cfg.judge.url:
        from pipeline.run.judge import judge_all

        found |= judge_all(rows, cfg.judge.url, cfg.judge.model, cfg.judge.timeout_s)
    evaluation.metrics |= {f"{cfg.split}/{k}": v for k, v in found.items()}
    evaluation.rows = rows


@torch.no_grad()
def _labelled(trained: Trained, split: TokenizedSplit) -> list[dict]:
    """{text, label, predicted, p(label) for each label} per example, one at a time (no
    padding to reason about; test splits are small)."""
    model, names = trained.model.eval(), trained.label_names
    rows = []
    for ids, label in zip(split.ids, split.labels or [], strict=True):
        pooled = model.pooled(model(torch.tensor([ids])), torch.tensor([len(ids)]))
        probs = label_probabilities(pooled[0]).tolist()
        row = {"text": trained.tokenizer.decode(ids), "label": names[label]}
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
