"""data.streaming: the stream's shards cover every training record once a pass, over ranks and
DataLoader workers; packing on the fly fills rows as pack_rows does; a stream resumed from a
position continues with the rows it would have yielded; a run stopped mid-run and resumed
trains to the same weights as an uninterrupted one; what cannot stream is refused."""

from __future__ import annotations

import random
import signal
from collections import Counter
from itertools import chain, islice, pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.arrays import pack_rows
from pipeline.data.loader import Collator
from pipeline.data.streaming import (
    POSITION_KEY,
    StreamingDataset,
    StreamPlan,
    shard_rows,
    source_of,
)
from pipeline.data.tokenizer import TextTokenizer
from pipeline.errors import UserError
from tests.helpers import app_config, kill_at_step, step_of, train_here

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
HELD = 20  # data.streaming_val_examples


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Unique lines (each starts with its number), so that a row names its record."""
    rng = random.Random(0)
    lines = [f"{i} " + " ".join(rng.choices(WORDS, k=rng.randint(2, 20))) for i in range(300)]
    path = tmp_path_factory.mktemp("stream") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer(corpus: Path) -> TextTokenizer:
    return TextTokenizer.train(corpus.read_text().splitlines(), 400, 2, ())


def source(corpus: Path, tokenizer: TextTokenizer, tmp_path: Path, *overrides: str):
    cfg = app_config(
        [
            "data=text",
            f"data.path={corpus}",
            "data.streaming=true",
            "data.max_length=64",
            "data.shuffle_buffer=50",
            *overrides,
        ],
        tmp_path,
    )
    return source_of(cfg.data, cfg.seed, tokenizer, HELD)


def one_pass(stream, shard: int, n_shards: int) -> list[list[int]]:
    """The rows of a shard's first pass."""
    rows = []
    for (ids, _), epoch, _ in shard_rows(stream, shard, n_shards):
        if epoch:
            return rows
        rows.append(ids.tolist())
    raise AssertionError("unreachable")


def expected(corpus: Path, tokenizer: TextTokenizer) -> Counter:
    lines = corpus.read_text().splitlines()[HELD:]
    return Counter(tuple([*tokenizer.encode(line), tokenizer.eos_id]) for line in lines)


def test_the_shards_of_two_ranks_and_their_workers_see_every_record_once_a_pass(
    corpus, tokenizer, tmp_path
):
    stream = source(corpus, tokenizer, tmp_path)
    # 2 ranks times 2 workers: shards 0..3.
    seen = Counter(tuple(row) for shard in range(4) for row in one_pass(stream, shard, 4))
    assert seen == expected(corpus, tokenizer)
    # Each shard's order is shuffled, differently each pass, and the same from the same seed.
    rows = [r for r, _, _ in islice(shard_rows(stream, 0, 4), 140)]
    first, second = [r[0].tolist() for r in rows[:70]], [r[0].tolist() for r in rows[70:]]
    assert sorted(first) == sorted(second) and first != second
    assert first == one_pass(stream, 0, 4)


def test_two_ranks_with_two_workers_each_yield_every_example_once_and_the_same_batches(
    corpus, tokenizer, tmp_path
):
    """The DataLoaders of rank 0 and rank 1 (two worker processes each) for one pass' worth
    of batches: as many batches on both ranks, no example twice, none missing."""
    stream = source(corpus, tokenizer, tmp_path)
    collator = Collator("causal_lm", tokenizer.pad_id, False)
    per_rank, batches = [], 0
    for rank in (0, 1):
        plan = StreamPlan(rank, 2, 2, total_batches=28)  # 4 shards of 70 records, 5 a batch
        data = StreamingDataset(stream, plan, 5, collator)
        loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
        out = list(loader)
        batches += len(out)
        per_rank.append(
            Counter(
                tuple(row[:n].tolist())
                for b in out
                for row, n in zip(b["input_ids"], b["lengths"], strict=True)
            )
        )
        assert {b[POSITION_KEY][0] for b in out} == {2 * rank, 2 * rank + 1}
    assert batches == 56
    assert per_rank[0] + per_rank[1] == expected(corpus, tokenizer)
    assert not set(per_rank[0]) & set(per_rank[1])


@pytest.mark.parametrize("packing", [False, True])
def test_a_stream_resumed_from_a_position_yields_the_rows_the_uninterrupted_one_did(
    corpus, tokenizer, tmp_path, packing
):
    stream = source(corpus, tokenizer, tmp_path, f"data.packing={packing}")
    straight = list(islice(shard_rows(stream, 1, 2), 300))  # into the third pass
    for stop in (0, 7, len(straight) // 2 - 1, 200):
        _, epoch, consumed = straight[stop]
        resumed = islice(shard_rows(stream, 1, 2, epoch, consumed), len(straight) - stop - 1)
        for (a, _, _), (b, _, _) in zip(resumed, straight[stop + 1 :], strict=True):
            assert np.array_equal(a[0], b[0])
            assert a[1]["positions"] is None or np.array_equal(a[1]["positions"], b[1]["positions"])


def test_packing_on_the_fly_fills_rows_as_pack_rows_does(corpus, tokenizer, tmp_path):
    single = one_pass(source(corpus, tokenizer, tmp_path), 0, 1)
    stream = source(corpus, tokenizer, tmp_path, "data.packing=true")
    packed = [(ids, extra) for (ids, extra), epoch, _ in islice(shard_rows(stream, 0, 1), 400)]
    lengths = np.array([len(r) for r in single])
    bounds = pack_rows(lengths, 64)
    want = [list(chain.from_iterable(single[a:b])) for a, b in pairwise(bounds)]
    got = [ids.tolist() for ids, _ in packed[: len(want)]]
    assert got == want
    positions = chain.from_iterable(range(n) for n in lengths[: bounds[1]])
    assert packed[0][1]["positions"].tolist() == list(positions)


STREAM_RUN = [
    "model=gpt-tiny",
    "data=text",
    "data.streaming=true",
    "data.packing=true",
    "data.max_length=64",
    "data.shuffle_buffer=40",
    f"data.streaming_val_examples={HELD}",
    "data.tokenizer.vocab_size=400",
    "model.drop_rate=0.1",
    "optim.batch_size=4",
    "trainer.max_steps=60",
    "trainer.val_check_interval=30",
    "trainer.checkpoint.every_n_train_steps=5",
    "trainer.enable_progress_bar=false",
    "logger=none",
]


@pytest.mark.slow
def test_a_streamed_run_killed_mid_pass_resumes_to_the_same_weights(corpus, tmp_path):
    """60 steps of 4 packed rows: past the end of the first pass (about 30 rows of 64 tokens
    a pass), a SIGKILL after a checkpoint, then a resume; the same weights as straight."""
    args = [*STREAM_RUN, f"data.path={corpus}"]
    straight = train_here(tmp_path / "straight", *args)
    assert straight["status"] == "FINISHED"
    outputs = tmp_path / "outputs"
    proc = kill_at_step(outputs, 20, signal.SIGKILL, *args)
    proc.wait(timeout=60)
    (last,) = outputs.glob("runs/*/*/*/checkpoints/last.ckpt")
    assert 20 <= step_of(last) < 60
    saved = torch.load(last, weights_only=True)["stream_position"]
    assert saved["shards"] == 1 and saved["positions"][0][2] > 0
    resumed = train_here(outputs, *args, "resume=auto")
    assert resumed["status"] == "FINISHED" and resumed["metrics"] == straight["metrics"]
    ours = torch.load(last, weights_only=True)
    (ref,) = (tmp_path / "straight").glob("runs/*/*/*/checkpoints/last.ckpt")
    theirs = torch.load(ref, weights_only=True)
    assert ours["global_step"] == theirs["global_step"] == 60
    assert ours["stream_position"] == theirs["stream_position"]
    for key, value in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][key], value), key


def test_streaming_refuses_what_cannot_stream(corpus, tmp_path):
    base = [f"data.path={corpus}", "data.streaming=true"]
    with pytest.raises(UserError, match=r"data\.streaming=True is not allowed"):
        app_config(["data=demo", *base], tmp_path)
    with pytest.raises(UserError, match=r"data\.chunking='concatenate' is not allowed"):
        app_config(["data=text", *base, "data.chunking=concatenate"], tmp_path)


def test_a_streamed_run_without_max_steps_is_refused_before_it_starts(corpus, tmp_path):
    from pipeline.data.preparation import build_data
    from pipeline.run.length import check_against_data

    cfg = app_config(
        ["data=text", f"data.path={corpus}", "data.streaming=true", "data.max_length=64"],
        tmp_path,
    )
    with pytest.raises(UserError, match="only 300"):  # 1000 held out by default
        build_data(cfg.data, cfg.seed)
    cfg.data.streaming_val_examples = HELD
    bundle = build_data(cfg.data, cfg.seed)
    assert len(bundle.splits["val"]) == HELD and len(bundle.splits["train"]) == 280
    with pytest.raises(UserError, match=r"trainer\.max_steps"):
        check_against_data(cfg, bundle)


@pytest.mark.slow
def test_a_streamed_ddp_run_on_two_cpu_ranks_saves_both_ranks_positions(corpus, tmp_path):
    from tests.helpers import run_cli

    outputs = tmp_path / "outputs"
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=8"]
    args = [*STREAM_RUN, f"data.path={corpus}", *ddp, "trainer.val_check_interval=4"]
    result = run_cli("train", f"paths.outputs={outputs}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    (last,) = outputs.glob("runs/*/*/*/checkpoints/last.ckpt")
    saved = torch.load(last, weights_only=True)["stream_position"]
    assert saved["shards"] == 2 and [p[0] for p in saved["positions"]] == [0, 1]
