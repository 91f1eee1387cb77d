"""Pruning a real LLM (issue 17): perplexity of SmolLM2-135M-Instruct on held-out English text,
dense and one-shot pruned to 50% (magnitude, Wanda; unstructured and 2:4), then a short full
fine-tune of the Wanda 2:4 model with its masks held, against the dense model fine-tuned as
long (so that the gap is pruning's, not the fine-tuning text's).

The text is the documentation prose in CPython's `pydoc_data/topics.py` (the help() topics,
present wherever Python is, no download): topics in sorted order alternate between the
calibration (and fine-tuning) file and the evaluation file, so the two share no text. Code and
grammar blocks (indented) are left out. Pruning goes through the pipeline's own Pruner and
input_norms, and the fine-tune through `pipeline.train`'s runner (sparsity=wanda,
pattern=2:4), which prunes again from the same calibration draw before its first step.

Minutes on a CPU: the smoke mode (the test suite's) does not run it.
"""

from __future__ import annotations

import contextlib
import io
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import Context, Figure, pipeline_config

TITLE = "Pruning a real LLM: SmolLM2-135M-Instruct"
MODES = ("quick", "full")


@dataclass(frozen=True)
class Size:
    tokens: int  # data.max_length: every sequence, calibration and evaluation
    calibration: int  # sequences (sparsity.calibration_samples)
    evaluation: int  # sequences
    steps: int  # fine-tuning optimizer steps, batch 4


SIZES = {"quick": Size(128, 32, 16, 6), "full": Size(256, 64, 16, 8)}
# method, pattern, what scales |W| (none: magnitude's ranking over the whole layer), label.
# Magnitude within each row (Wanda with every ||X_j|| = 1) tells Wanda's two differences
# from magnitude apart: its comparison group, and the activation norms.
CASES = [
    ("magnitude", "unstructured", None, "magnitude 50%, one-shot"),
    ("wanda", "unstructured", "ones", "magnitude 50% within each output row, one-shot"),
    ("wanda", "unstructured", "norms", "wanda 50%, one-shot"),
    ("magnitude", "2:4", None, "magnitude 2:4, one-shot"),
    ("wanda", "2:4", "norms", "wanda 2:4, one-shot"),
]


def paragraphs(text: str) -> list[str]:
    """A topic's prose paragraphs, each on one line; headings' underlines and indented blocks
    (code, grammar) left out."""
    kept = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip("*=- ")]
        if lines and not lines[0][0].isspace():
            kept.append(" ".join(line.strip() for line in lines))
    return kept


def write_text(folder: Path, tokens: int) -> tuple[Path, Path]:
    """calibration.txt and evaluation.txt: one example a line, each line long enough to fill
    `tokens` tokens (about 4 characters a token), from alternate topics."""
    from pydoc_data.topics import topics

    files = (folder / "calibration.txt", folder / "evaluation.txt")
    for part, path in enumerate(files):
        lines, line = [], ""
        for key in sorted(topics)[part::2]:
            for paragraph in paragraphs(topics[key]):
                line = f"{line} {paragraph}".strip()
                if len(line) >= 5 * tokens:
                    lines.append(line)
                    line = ""
        path.write_text("\n".join(lines) + "\n")
    return files


def config(gguf: Path, files: tuple[Path, Path], size: Size, outputs: Path, extra: list[str]):
    calibration, evaluation = files
    return pipeline_config(
        [
            f"model.init_from={gguf}",
            "data=text",
            f"data.path={calibration}",
            f"data.val_path={evaluation}",
            f"data.test_path={evaluation}",
            f"data.max_length={size.tokens}",
            f"sparsity.calibration_samples={size.calibration}",
            "optim.batch_size=4",
            "logger=none",
            "trainer=cpu",
            "trainer.enable_progress_bar=false",
            "export.formats=[]",
            *extra,
        ],
        outputs,
    )


def run(ctx: Context) -> list[Figure]:
    from pipeline.assembly.model import build_model
    from pipeline.config.sparsity import SparsityConfig
    from pipeline.evaluation.split import evaluate
    from pipeline.fetch import fetch_smollm2
    from pipeline.sparsity.callback import calibration_batch
    from pipeline.sparsity.pruner import Pruner, input_norms
    from pipeline.sparsity.targets import target_layers

    size = ctx.pick(SIZES)
    gguf = fetch_smollm2(Path.home() / ".cache" / "gpt-finetune-pipeline" / "models")
    calibration, evaluation = write_text(ctx.workdir, size.tokens)
    # The evaluation file holds exactly the sequences measured.
    kept = evaluation.read_text().splitlines()[: size.evaluation]
    evaluation.write_text("\n".join(kept) + "\n")
    files = (calibration, evaluation)
    cfg = config(gguf, files, size, ctx.workdir / "outputs", [])
    with contextlib.redirect_stdout(io.StringIO()):
        trained, bundle = build_model(cfg)
    trained.model.eval()

    def ppl(trained) -> float:
        return evaluate(trained, cfg.data, cfg.seed, "val", cfg).metrics["val/ppl"]

    ids, lengths = calibration_batch(bundle, size.calibration, cfg.seed)
    measured = bundle.splits["val"].ids
    what = (
        f"val perplexity, {len(measured)} sequences ({sum(map(len, measured))} tokens) of "
        f"pydoc topics; calibration {len(ids)} sequences ({int(lengths.sum())} tokens)"
    )
    figures = [Figure(f"dense, {what}", "ppl", [ppl(trained)])]
    layers = target_layers(trained.model, "all-linear")
    norms = input_norms(trained.model, layers, ids, lengths)
    dense = {name: w.detach().clone() for name, w in trained.model.state_dict().items()}
    ones = {layer: torch.ones_like(n) for layer, n in norms.items()}
    for method, pattern, scale, label in CASES:
        sparsity = SparsityConfig(name=method, method=method, pattern=pattern, final=0.5)
        weighting = {"ones": ones, "norms": norms}.get(scale)
        Pruner(sparsity, trained.model, layers).prune_to(0.5, weighting)
        figures.append(Figure(label, "ppl", [ppl(trained)]))
        trained.model.load_state_dict(dense)
    outliers = [float(n.max() / n.median()) for n in norms.values()]
    figures.append(
        Figure(
            "input feature norms (Wanda's X): largest / median, median over layers",
            "ratio",
            [statistics.median(outliers)],
            note=f"largest in any layer {max(outliers):,.0f}; Wanda weights |W| by these norms",
        )
    )
    del trained, dense, norms, ones
    steps = [f"trainer.max_steps={size.steps}", "trainer.max_epochs=1"]
    steps += ["trainer.num_sanity_val_steps=0", "optim.lr=1e-4", "optim.warmup_steps=2"]
    for label, extra in [
        ("dense, fine-tuned", []),
        ("wanda 2:4, fine-tuned with masks held", ["sparsity=wanda", "sparsity.pattern=2:4"]),
    ]:
        tuned = config(gguf, files, size, ctx.workdir / "outputs", [*steps, *extra])
        note = f"full fine-tune, {size.steps} steps of 4 x {size.tokens} tokens, lr 1e-4"
        figures.append(
            Figure(label, "ppl", [_fine_tuned_ppl(tuned, ctx.workdir / label)], note=note)
        )
    return figures


def _fine_tuned_ppl(cfg, folder: Path) -> float:
    from pipeline.run.launch import Launch
    from pipeline.run.run import train

    folder.mkdir(parents=True)
    with contextlib.redirect_stdout(io.StringIO()):
        record = train(cfg, Launch(folder))
    return record.metrics["test/ppl"]
