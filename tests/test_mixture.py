"""A mixture of data sets (data.datasets): each source read with its own format and columns,
drawn to exactly its share, recorded as its own dataset with that share."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config.data import DataConfig
from pipeline.data.mixture import mixed
from pipeline.data.preparation import build_data
from pipeline.errors import UserError
from pipeline.tracking.datasets import as_dataset
from tests.helpers import app_config


def instructions(path: Path, tag: str, n: int, keys=("instruction", "output")) -> Path:
    rows = [{keys[0]: f"{tag} question {i}", keys[1]: f"{tag} answer {i}"} for i in range(n)]
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(sources: list[dict], **changes) -> DataConfig:
    values = {
        "name": "t",
        "task": "instruct",
        "datasets": sources,
        "val_fraction": 0.1,
        "test_fraction": 0.0,
        "max_length": 64,
        "tokenizer": {"vocab_size": 300, "min_frequency": 1},
        **changes,
    }
    cfg = DataConfig.model_validate(values)
    cfg.check()
    return cfg


def tags(records) -> Counter:
    return Counter(c[0]["content"].split()[0] for c in records.conversations)


@pytest.fixture
def sources(tmp_path) -> dict[str, Path]:
    return {
        "a": instructions(tmp_path / "a.jsonl", "alpha", 90),
        # Another format and other field names: the source's own settings read it.
        "b": instructions(tmp_path / "b.parquet", "beta", 100, ("prompt", "response")),
        "c": instructions(tmp_path / "c.jsonl", "gamma", 30),
    }


B_FIELDS = {"instruction": "prompt", "input": "input", "output": "response"}


def test_weights_give_exact_shares_without_repeating_a_source(sources):
    cfg = config(
        [
            {"path": str(sources["a"]), "weight": 3},
            {"path": str(sources["b"]), "weight": 1, "fields": B_FIELDS},
        ]
    )
    records, parts = mixed(cfg, 0)
    # alpha runs out first at 3/4: 90 of it, and 30 of beta.
    assert tags(records) == {"alpha": 90, "beta": 30}
    assert [(p.name, p.examples, p.share) for p in parts] == [("a", 90, 0.75), ("b", 30, 0.25)]
    again, _ = mixed(cfg, 0)
    other, _ = mixed(cfg, 1)
    assert again.conversations == records.conversations  # the seed decides the draw
    assert other.conversations != records.conversations


def test_an_example_count_is_exact_and_repeats_a_small_source(sources):
    cfg = config(
        [
            {"path": str(sources["c"]), "examples": 50, "name": "small"},
            {"path": str(sources["a"]), "weight": 1},
            {"path": str(sources["b"]), "weight": 1, "fields": B_FIELDS},
        ]
    )
    records, parts = mixed(cfg, 0)
    assert tags(records) == {"gamma": 50, "alpha": 90, "beta": 90}
    drawn = Counter(c[0]["content"] for c in records.conversations if "gamma" in c[0]["content"])
    assert len(drawn) == 30 and max(drawn.values()) == 2  # every record once, 20 twice
    assert parts[0].name == "small" and parts[0].examples == 50


def test_each_source_is_recorded_with_its_share(sources, tmp_path):
    cfg = config(
        [
            {"path": str(sources["a"]), "weight": 1},
            {"path": str(sources["c"]), "weight": 1},
        ],
        cache_dir=str(tmp_path / "cache"),
    )
    bundle = build_data(cfg, 0)
    assert len(bundle.splits["train"]) + len(bundle.splits["val"]) == 60
    part = bundle.sources["mixture/c"]
    assert (part.examples, part.share) == (30, 0.5) and part.path == str(sources["c"])
    dataset = as_dataset("mixture/c", part)
    assert dataset.name == "mixture-c"
    assert json.loads(dataset.profile) == {"num_rows": 30, "share_of_mixture": 0.5}
    # Opened from the cache: the same record; another weight is another entry.
    assert build_data(cfg, 0).sources == bundle.sources
    heavier = cfg.model_copy(deep=True)
    heavier.datasets[0].weight = 2
    assert build_data(heavier, 0).cache != bundle.cache


@pytest.mark.parametrize(
    "sources,message",
    [
        ([{"path": "{a}"}], r"a weight \(its share of the mixture\) or an example count"),
        ([{"path": "{a}", "weight": 1, "examples": 3}], r"or an example count, one of the two"),
        ([{"path": "{dir}/none-*.jsonl", "weight": 1}], r"this pattern matches nothing"),
    ],
)
def test_bad_mixtures_are_refused(sources, message, tmp_path):
    path = instructions(tmp_path / "a.jsonl", "alpha", 5)
    given = [{k: v.format(a=path, dir=tmp_path) if k == "path" else v for k, v in s.items()}
             for s in sources]  # fmt: skip
    with pytest.raises(UserError, match=message):
        config(given)


def test_a_path_and_a_mixture_are_not_both_given(tmp_path):
    path = str(instructions(tmp_path / "a.jsonl", "alpha", 5))
    with pytest.raises(UserError, match=r"data\.path is required .* not both"):
        config([{"path": path, "weight": 1}], path=path)
    cfg = app_config(["data=instruct", f"data.datasets=[{{path: {path}, weight: 1}}]"], tmp_path)
    assert cfg.data.path is None and cfg.data.datasets[0].weight == 1
    with pytest.raises(UserError, match=r"data\.datasets\.0\.weight=0 is not allowed"):
        app_config(["data=instruct", f"data.datasets=[{{path: {path}, weight: 0}}]"], tmp_path)
