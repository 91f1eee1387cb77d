"""Pruning quality: validation perplexity of a small causal LM, dense and pruned, in one run.

    python benchmarks/sparsity.py [--quick] [--out benchmarks/results-sparsity.md]

A GPT is trained on the synthetic SMS corpus (data=demo_lm), then pruned by the pipeline's own
code: one-shot magnitude and Wanda at 50% and 2:4 without fine-tuning (the one-shot LLM pruning
setting of the Wanda paper), and gradual magnitude pruning to 50% with fine-tuning, trained
from the dense weights through `pipeline.train`'s runner. Every figure is the validation
perplexity of the same split.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

import pipeline.cli  # noqa: E402, F401  (registers the ${project_root:} resolver)
from pipeline.config import CONF_DIR, SparsityConfig, validate  # noqa: E402
from pipeline.evaluate import evaluate  # noqa: E402
from pipeline.restore import load_trained  # noqa: E402
from pipeline.runner import calibration_batch, train  # noqa: E402
from pipeline.sparsity.pruner import Pruner, input_norms  # noqa: E402
from pipeline.sparsity.targets import target_layers  # noqa: E402

FULL = ["model=gpt-mini", "trainer.max_epochs=3", "data.synthetic_examples=3000"]
QUICK = ["model=gpt-tiny", "trainer.max_epochs=2", "data.synthetic_examples=600"]


def config(overrides: list[str], outputs: Path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "experiment=lm_demo",
                "logger=none",
                "trainer=cpu",
                "trainer.enable_progress_bar=false",
                "export.formats=[]",
                f"paths.outputs={outputs}",
                *overrides,
            ],
        )
    return validate(cfg)


def run(cfg, folder: Path) -> dict:
    folder.mkdir(parents=True)
    return train(cfg, cfg.model_dump(mode="json"), folder)


def val_ppl(trained, cfg) -> float:
    return evaluate(trained, cfg.data, cfg.seed, "val", cfg)["val/ppl"]


def one_shot(dense, cfg, method: str, pattern: str) -> float:
    """Prune a copy of the dense model without any training, and measure it."""
    from pipeline.data import build_data

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="gpt-tiny, fewer examples")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-sparsity.md")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = config(size, work / "outputs")
        record = run(cfg, work / "dense")
        dense = load_trained(record["paths"]["best_checkpoint"])
        rows.append(("dense", "0%", "-", val_ppl(dense, cfg)))
        for method, pattern, label in [
            ("magnitude", "unstructured", "magnitude, one-shot"),
            ("wanda", "unstructured", "wanda, one-shot"),
            ("magnitude", "2:4", "magnitude 2:4, one-shot"),
            ("wanda", "2:4", "wanda 2:4, one-shot"),
        ]:
            level = "50% (2:4)" if pattern == "2:4" else "50%"
            rows.append((label, level, "no", one_shot(dense, cfg, method, pattern)))
        tuned = ["sparsity=gradual", "sparsity.final=0.5", "trainer.max_epochs=1"]
        tuned += [f"model.init_from={record['paths']['run_dir']}"]
        gradual = run(config([*size, *tuned], work / "outputs"), work / "gradual")
        rows.append(("gradual magnitude", "50%", "1 epoch", gradual["metrics"]["val/ppl"]))
    lines = [
        f"Sparsity quality ({'--quick' if args.quick else 'full'}): {' '.join(size)}, "
        f"data=demo_lm; {platform.machine()} with {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}; {time.time() - started:.0f} s.",
        "",
        "| method | sparsity | fine-tuning | val perplexity |",
        "| --- | --- | --- | ---: |",
        *(f"| {m} | {s} | {f} | {p:.3f} |" for m, s, f, p in rows),
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
