"""Packing (data.packing=true) against one example a padded row (issue 15): trained tokens per
second of the pipeline's own training step on `gpt-mini`, and the share of padding, on
instruction data with a realistic spread of lengths (answer and prompt lengths drawn from a
log-normal, a few tokens to a whole row, as in chat data sets)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from benchmarks.common import Context, Figure, interleave, pipeline_config, pipeline_segment, ratios

TITLE = "Packing versus padding"
# examples, max_length, batch, steps (after 1 warmup), rounds
SIZES = {"smoke": (48, 64, 4, 2, 1), "quick": (600, 256, 8, 8, 2), "full": (1200, 512, 8, 10, 3)}


def _data(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = [
        "the",
        "model",
        "answers",
        "every",
        "question",
        "about",
        "data",
        "with",
        "a",
        "short",
        "and",
        "clear",
        "sentence",
    ]

    def text(mean: float) -> str:
        return " ".join(
            rng.choice(words) for _ in range(max(1, int(rng.lognormvariate(mean, 0.9))))
        )

    rows = [{"instruction": text(2.5), "output": text(3.0)} for _ in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run(ctx: Context) -> list[Figure]:
    from torch.utils.data import DataLoader

    from pipeline.data.loader import IGNORE_INDEX, split_loader
    from pipeline.data.preparation import build_data
    from pipeline.model.gpt import GPTConfig, GPTModel

    n, max_length, batch, steps, rounds = ctx.pick(SIZES)
    path = ctx.workdir / "packing.jsonl"
    _data(path, n)
    overrides = [
        "model=gpt-mini",
        "data=instruct",
        f"data.path={path}",
        f"data.max_length={max_length}",
        "data.val_fraction=0",
        "data.test_fraction=0",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
    ]
    stats, cases = {}, {}
    for packing in (False, True):
        cfg = pipeline_config([*overrides, f"data.packing={packing}"], ctx.workdir)
        data = build_data(cfg.data, cfg.seed)
        loader = list(split_loader(data, "train", batch, cfg.seed, 0))[: steps + 1]
        trained = sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in loader[1:]) / steps
        slots = sum(b["input_ids"].numel() for b in loader) / len(loader)
        real = sum(b["n_tokens"] for b in loader) / len(loader)
        shape = GPTConfig(data.tokenizer.vocab_size, max_length, 128, 4, 4)
        name = "packed" if packing else "padded"
        stats[name] = (trained, 1 - real / slots)
        # The same collated batches every round, as a loader of ready batches.
        batches = DataLoader(loader, batch_size=None)
        cases[name] = lambda shape=shape, batches=batches, cfg=cfg, trained=trained: (
            trained / pipeline_segment(GPTModel(shape), batches, cfg, 1, tracking_on=False)
        )
    s = interleave(cases, rounds)
    figures = []
    for name in ("padded", "packed"):
        trained, padding = stats[name]
        note = f"{trained:.0f} trained tokens a batch of {batch} rows; padding {100 * padding:.0f}%"
        figures.append(Figure(f"trained tokens/s, {name}", "tokens/s", s[name], note=note))
        figures.append(Figure(f"padding share, {name}", "%", [100 * padding]))
    figures.append(
        Figure("trained tokens/s: packed / padded", "ratio", ratios(s["packed"], s["padded"]), 1.5)
    )
    return figures
