"""Instruction fine-tuning of a real LLM (issue 15): exact match and token F1 of greedy answers
on the instruct demo's test split, from SmolLM2-135M-Instruct as it comes and after
experiment=instruct_smollm2 (LoRA, the model's own chat template), with the time training took.

The smoke mode (the test suite's) trains gpt-tiny from scratch on a small instruct set instead.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import Context, Figure, pipeline_config

TITLE = "Instruction fine-tuning: SmolLM2 before and after"
SMOKE = ["experiment=instruct_demo", "model=gpt-tiny", "data.synthetic_examples=80"]
# overrides, longest answer generated
SIZES = {"smoke": (SMOKE, 8), "quick": (["experiment=instruct_smollm2"], 48)}
SIZES["full"] = SIZES["quick"]


def run(ctx: Context) -> list[Figure]:
    from pipeline.assembly.model import build_model
    from pipeline.assembly.restore import load_trained
    from pipeline.fetch import fetch_smollm2
    from pipeline.run.launch import Launch
    from pipeline.run.run import train

    overrides, max_new_tokens = ctx.pick(SIZES)
    if ctx.mode != "smoke":
        source = fetch_smollm2(Path.home() / ".cache" / "gpt-finetune-pipeline" / "models")
        overrides = [*overrides, f"model.init_from={source}"]
    settings = ["logger=none", "export.formats=[hf]", "trainer.enable_progress_bar=false"]
    cfg = pipeline_config([*overrides, *settings], ctx.workdir / "outputs")
    # Before training: the base model (LoRA's B matrices start at zero, so it answers as the
    # base does) with the template the run trains with.
    before = _scores(build_model(cfg)[0], cfg, max_new_tokens)
    run_dir = ctx.workdir / "run"
    run_dir.mkdir()
    start = time.perf_counter()
    record = train(cfg, Launch(run_dir))
    seconds = time.perf_counter() - start
    after = _scores(load_trained(record.paths.best_checkpoint), cfg, max_new_tokens)
    name = Path(cfg.model.init_from).name if cfg.model.init_from else cfg.model.name
    return [
        Figure(f"exact match, {name} as it comes", "share", [before["exact_match"]]),
        Figure("exact match, fine-tuned", "share", [after["exact_match"]]),
        Figure(f"token F1, {name} as it comes", "share", [before["token_f1"]]),
        Figure("token F1, fine-tuned", "share", [after["token_f1"]]),
        Figure(
            f"fine-tuning ({cfg.data.synthetic_examples} examples, {cfg.trainer.max_epochs} "
            "epoch(s), with test and export)",
            "s",
            [seconds],
        ),
    ]


def _scores(trained, cfg, max_new_tokens: int) -> dict[str, float]:
    from pipeline.data.records import load_splits
    from pipeline.evaluation.answers import answer_all, scores

    conversations = load_splits(cfg.data, cfg.seed)["test"].conversations
    return scores(answer_all(trained, conversations, max_new_tokens))
