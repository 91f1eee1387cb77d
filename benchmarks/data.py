"""Data preparation at scale (issue 24), on a generated instruction set shaped like the ones
people bring (10-40 words of instruction, 60-300 words of answer):

- preparation's throughput (tokens/s, records read to arrays, no cache) against the fast
  tokenizer's own batch throughput on the same texts, for instruct, causal LM (the answers as
  documents) and classification (the instructions, labelled): target at least 0.7;
- a cached run's time from the command to its first step, beyond the same command's on a
  small set (target at most 5 s), and its peak memory beyond the small run's (target at most
  300 MB): what a second run, a resume or a sweep trial pays.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from benchmarks.common import Context, Figure, pipeline_config
from benchmarks.startup import EXIT_ENV, STAMPS_ENV, _timed

TITLE = "Data preparation and the prepared-data cache"
# records of the large set, of the small one; rounds
SIZES = {"smoke": (300, 100, 1), "quick": (20_000, 2_000, 3), "full": (200_000, 2_000, 1)}
VOCAB = 8192


def write_instructions(path: Path, n: int, seed: int = 0) -> None:
    """n instruction records, with a label (the kind of task) for classification."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "gu", "an", "el", "or"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(3000)]
    weights = [1 / (rank + 1) for rank in range(len(words))]  # Zipf, as words in text are
    kinds = ["explain", "summarise", "translate", "list"]
    with open(path, "w") as f:
        for _ in range(n):
            instruction = " ".join(rng.choices(words, weights, k=rng.randint(10, 40)))
            output = " ".join(rng.choices(words, weights, k=rng.randint(60, 300)))
            record = {"instruction": instruction, "output": output, "kind": rng.choice(kinds)}
            f.write(json.dumps(record) + "\n")


def run(ctx: Context) -> list[Figure]:
    from pipeline.data.chat import TEMPLATES, render_chat
    from pipeline.data.preparation import prepare
    from pipeline.data.records import load_splits
    from pipeline.data.tokenizer import TextTokenizer

    n, small, rounds = ctx.pick(SIZES)
    big_file, small_file = ctx.workdir / "big.jsonl", ctx.workdir / "small.jsonl"
    write_instructions(big_file, n)
    write_instructions(small_file, small, seed=1)
    tokenizer_file = ctx.workdir / "tokenizer.json"
    sample = [json.loads(line)["output"] for line in big_file.open().readlines()[:2000]]
    TextTokenizer.train(sample, VOCAB, 2, TEMPLATES["chatml"].special_tokens).tokenizer.save(
        str(tokenizer_file)
    )
    tokenizer = TextTokenizer.load(tokenizer_file)
    common = [f"data.tokenizer.path={tokenizer_file}", "data.max_length=512", "data.cache_dir=null"]
    common.append("model.context_length=512")
    tasks = {
        "instruct": ["data=instruct", "data.format=jsonl"],
        "causal_lm": ["data=jsonl", "data.task=causal_lm", "data.text_column=output"],
        "classification": ["data=jsonl", "data.text_column=output", "data.label_column=kind"],
    }
    figures = []
    for task, overrides in tasks.items():
        cfg = pipeline_config([*overrides, f"data.path={big_file}", *common], ctx.workdir).data
        records = load_splits(cfg, 0)
        if task == "instruct":
            chat = tokenizer.with_chat_template(TEMPLATES["chatml"].jinja, "<|im_end|>")
            texts = [
                render_chat(chat.chat_template, c, False)
                for split in records.values()
                for c in split.conversations
            ]
        else:
            texts = [t for split in records.values() for t in split.texts]
        alone, prepared = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            encodings = tokenizer.tokenizer.encode_batch_fast(texts)
            tokens = sum(len(e.ids) for e in encodings)
            alone.append(tokens / (time.perf_counter() - start))
            del encodings
            start = time.perf_counter()
            bundle = prepare(cfg, 0, tokenizer)
            elapsed = time.perf_counter() - start
            # Counted before truncation, as the tokenizer alone counts them.
            prepared.append(tokens / elapsed)
            del bundle
        ratio = [p / a for p, a in zip(prepared, alone, strict=True)]
        figures += [
            Figure(f"{task}: fast tokenizer alone, {n:,} records", "tokens/s", alone),
            Figure(f"{task}: preparation (read, render, tokenize, arrays)", "tokens/s", prepared),
            Figure(f"{task}: preparation / tokenizer", "x", ratio, target=0.7),
        ]
    if ctx.mode != "smoke":  # four runs of the command: half a minute the test does without
        figures += _cached_runs(ctx, big_file, small_file, tokenizer_file, n, small)
        figures += _streaming(ctx, tokenizer_file)
    return figures


def _cached_runs(
    ctx: Context, big: Path, small: Path, tokenizer: Path, n: int, n_small: int
) -> list[Figure]:
    """Each set prepared once (python -m pipeline.prepare), then a run that opens it: to its
    first step, and a few steps for its peak memory."""
    run = [
        "data=instruct",
        f"data.tokenizer.path={tokenizer}",
        "data.max_length=512",
        "model=gpt-tiny",
        "model.context_length=512",
        "logger=none",
        "trainer=cpu",
        "trainer.max_steps=5",
        "trainer.enable_progress_bar=false",
        "export.formats=[]",
    ]
    results = {}
    for name, path in (("small", small), ("large", big)):
        outputs = ctx.workdir / f"outputs-{name}"
        args = [f"paths.outputs={outputs}", f"data.path={path}", *run]
        _timed([sys.executable, "-m", "pipeline.prepare", *args])
        stamps = ctx.workdir / f"stamps-{name}.json"
        start = time.time()
        _timed(
            [sys.executable, "-m", "benchmarks.startup", *args],
            **{STAMPS_ENV: str(stamps), EXIT_ENV: "1"},
        )
        first_step = json.loads(stamps.read_text())["first_step"] - start
        stamps.unlink()
        _timed([sys.executable, "-m", "benchmarks.startup", *args], **{STAMPS_ENV: str(stamps)})
        results[name] = first_step, json.loads(stamps.read_text())["peak_rss_mb"]
    (small_s, small_mb), (large_s, large_mb) = results["small"], results["large"]
    return [
        Figure(f"cached run to its first step, {n_small:,} records", "s", [small_s]),
        Figure(f"cached run to its first step, {n:,} records", "s", [large_s]),
        Figure("  beyond the small set's", "s", [large_s - small_s], target=5.0, at_most=True),
        Figure(f"training peak RSS, {n_small:,} records", "MB", [small_mb]),
        Figure(f"training peak RSS, {n:,} records", "MB", [large_mb]),
        Figure("  beyond the small set's", "MB", [large_mb - small_mb], 300.0, at_most=True),
    ]


# data.streaming: corpus bytes, training steps of the streamed run.
STREAMED = {"smoke": (2_000_000, 5), "quick": (200_000_000, 100), "full": (2_000_000_000, 300)}


def write_corpus(path: Path, size: int, seed: int = 0) -> None:
    """A text corpus of about `size` bytes, one sentence a line: a block of sentences written
    again and again, shuffled each time (seconds a GB, where drawing every word would take
    minutes)."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "gu", "an", "el", "or"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(3000)]
    lines = [" ".join(rng.choices(words, k=rng.randint(8, 60))) for _ in range(20_000)]
    written = 0
    with open(path, "w") as f:
        while written < size:
            rng.shuffle(lines)
            block = "\n".join(lines) + "\n"
            f.write(block)
            written += len(block)


def _streaming(ctx: Context, tokenizer: Path) -> list[Figure]:
    """A run streaming a corpus larger than the cached sets (quick 200 MB, full 2 GB) for a
    fixed number of steps: its peak memory must not grow with the corpus, and its speed."""
    size, steps = ctx.pick(STREAMED)
    corpus = ctx.workdir / "corpus.txt"
    write_corpus(corpus, size)
    batch, length = 16, 128
    args = [
        f"paths.outputs={ctx.workdir / 'outputs-streamed'}",
        "data=text",
        f"data.path={corpus}",
        "data.streaming=true",
        "data.packing=true",
        # A small validation split: fit's end (the speed's clock) includes validating it.
        "data.streaming_val_examples=100",
        f"data.max_length={length}",
        f"data.tokenizer.path={tokenizer}",
        "model=gpt-tiny",
        "logger=none",
        "trainer=cpu",
        f"trainer.max_steps={steps}",
        f"optim.batch_size={batch}",
        "trainer.enable_progress_bar=false",
        "export.formats=[]",
    ]
    stamps = ctx.workdir / "stamps-streamed.json"
    _timed([sys.executable, "-m", "benchmarks.startup", *args], **{STAMPS_ENV: str(stamps)})
    stamped = json.loads(stamps.read_text())
    corpus.unlink()
    # Packed rows are nearly full: about max_length tokens each, after the first step.
    tokens_per_s = (steps - 1) * batch * length / (stamped["fit_end"] - stamped["first_step"])
    return [
        Figure(
            f"streamed run, {size / 1e6:,.0f} MB corpus: peak RSS",
            "MB",
            [stamped["peak_rss_mb"]],
            target=2048,
            at_most=True,
        ),
        Figure("  its training speed (packed rows)", "tokens/s", [tokens_per_s]),
    ]
