"""Pruning quality: validation perplexity of a small causal LM, dense and pruned, in one run.

A GPT is trained on the synthetic SMS corpus (data=demo_lm), then pruned by the pipeline's own
code: one-shot magnitude and Wanda at 50% and 2:4 without fine-tuning (the one-shot LLM pruning
setting of the Wanda paper), and gradual magnitude pruning to 50% with fine-tuning, trained
from the dense weights through `pipeline.train`'s runner. Every figure is the validation
perplexity of the same split (one measurement each: training is seeded and deterministic).
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

from benchmarks.common import Context, Figure, pipeline_config
from pipeline.assembly.restore import load_trained
from pipeline.config.sparsity import SparsityConfig
from pipeline.evaluation.split import evaluate
from pipeline.run.launch import Launch
from pipeline.run.run import train
from pipeline.sparsity.callback import calibration_batch
from pipeline.sparsity.pruner import Pruner, input_norms
from pipeline.sparsity.targets import target_layers

TITLE = "Sparsity quality"
SIZES = {
    "smoke": ["model=gpt-tiny", "trainer.max_epochs=1", "data.synthetic_examples=300"],
    "quick": ["model=gpt-tiny", "trainer.max_epochs=2", "data.synthetic_examples=600"],
    "full": ["model=gpt-mini", "trainer.max_epochs=3", "data.synthetic_examples=3000"],
}


def config(overrides: list[str], outputs: Path):
    fixed = [
        "experiment=lm_demo",
        "logger=none",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
    ]
    return pipeline_config([*fixed, "export.formats=[]", *overrides], outputs)


def train_run(cfg, folder: Path) -> dict:
    folder.mkdir(parents=True)
    with contextlib.redirect_stdout(io.StringIO()):  # the run's model summary, not a figure
        return train(cfg, Launch(folder)).to_dict()


def val_ppl(trained, cfg) -> float:
    return evaluate(trained, cfg.data, cfg.seed, "val", cfg).metrics["val/ppl"]


def one_shot(dense, cfg, method: str, pattern: str) -> float:
    """Prune a copy of the dense model without any training, and measure it."""
    from pipeline.data.preparation import build_data

    trained = copy.copy(dense)
    trained.model = copy.deepcopy(dense.model)
    sparsity = SparsityConfig(name=method, method=method, pattern=pattern, final=0.5)
    layers = target_layers(trained.model, sparsity.target_modules)
    pruner = Pruner(sparsity, trained.model, layers)
    norms = None
    if method == "wanda":
        bundle = build_data(cfg.data, cfg.seed, trained.tokenizer)
        ids, lengths = calibration_batch(bundle, sparsity.calibration_samples, cfg.seed)
        norms = input_norms(trained.model, layers, ids, lengths)
    pruner.prune_to(0.5, norms)
    return val_ppl(trained, cfg)


def run(ctx: Context) -> list[Figure]:
    size = ctx.pick(SIZES)
    cfg = config(size, ctx.workdir / "outputs")
    record = train_run(cfg, ctx.workdir / "dense")
    dense = load_trained(record["paths"]["best_checkpoint"])
    what = f"val perplexity ({' '.join(size)})"
    figures = [Figure(f"dense, {what}", "ppl", [val_ppl(dense, cfg)])]
    for method, pattern, label in [
        ("magnitude", "unstructured", "magnitude 50%, one-shot"),
        ("wanda", "unstructured", "wanda 50%, one-shot"),
        ("magnitude", "2:4", "magnitude 2:4, one-shot"),
        ("wanda", "2:4", "wanda 2:4, one-shot"),
    ]:
        figures.append(Figure(label, "ppl", [one_shot(dense, cfg, method, pattern)]))
    # Fine-tuning gets the same extra epoch dense and pruned, so that the gap is pruning's.
    more = ["trainer.max_epochs=1", f"model.init_from={record['paths']['run_dir']}"]
    for i, (label, extra) in enumerate(
        [
            ("dense, trained 1 more epoch", []),
            (
                "gradual magnitude 50%, 1 epoch fine-tuning",
                ["sparsity=gradual", "sparsity.final=0.5"],
            ),
            ("wanda 2:4, then 1 epoch fine-tuning", ["sparsity=wanda", "sparsity.pattern=2:4"]),
        ]
    ):
        tuned = train_run(
            config([*size, *more, *extra], ctx.workdir / "outputs"), ctx.workdir / f"tuned-{i}"
        )
        figures.append(Figure(label, "ppl", [tuned["metrics"]["val/ppl"]]))
    return figures
