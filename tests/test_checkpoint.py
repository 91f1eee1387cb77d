"""The checkpoint format (pipeline/checkpoint.py) and the run record (pipeline/record.py):
what a checkpoint carries, that older checkpoints still load, and that run.json reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline import checkpoint
from pipeline.assembly.restore import load_pretrained, load_trained
from pipeline.errors import UserError
from pipeline.record import RunRecord, Status
from tests.helpers import train_in_process

FIXTURES = Path(__file__).parent / "fixtures"


def test_a_checkpoint_of_the_unversioned_format_still_loads_and_gives_the_same_logits() -> None:
    """checkpoint-v0.ckpt was written by main at bb964d7 (before the format had a version): a
    LoRA classifier with 50% magnitude masks, trained 3 steps; its .json holds the
    logits that code computed for one prompt."""
    expected = json.loads((FIXTURES / "checkpoint-v0.json").read_text())
    ckpt = checkpoint.read(FIXTURES / "checkpoint-v0.ckpt")
    assert "format_version" not in ckpt[checkpoint.METADATA_KEY]
    assert checkpoint.Metadata.of(ckpt, "v0").version == 0
    trained = load_trained(FIXTURES / "checkpoint-v0.ckpt")
    assert trained.label_names == expected["label_names"] and trained.lora == expected["lora"]
    assert sorted(trained.masks) == expected["masks"]
    ids = trained.tokenizer.encode("WINNER!! Call now to claim your prize")[:16]
    assert ids == expected["prompt_ids"]
    with torch.no_grad():
        logits = trained.model(torch.tensor([ids]))[0, :, 0]
    assert torch.allclose(logits, torch.tensor(expected["logits"]), atol=1e-6)
    # As pretrained weights, the adapters come merged into the GPT.
    pretrained = load_pretrained(FIXTURES / "checkpoint-v0.ckpt")
    assert pretrained.shape.emb_dim == 16 and "trf_blocks.0.att.W_query.weight" in pretrained.state


def test_a_checkpoint_carries_every_key_of_the_format(tmp_path: Path) -> None:
    record = train_in_process(
        [
            "model.emb_dim=16",
            "model.n_layers=1",
            "trainer.max_epochs=null",
            "trainer.max_steps=2",
            "lora=default",
            "sparsity=magnitude",
            "export.formats=[]",
        ],
        tmp_path,
    )
    ckpt = checkpoint.read(record["paths"]["last_checkpoint"])
    meta = checkpoint.Metadata.of(ckpt, "new")
    assert meta.version == checkpoint.FORMAT_VERSION
    assert meta.model["arch"] == "gpt" and meta.model["gpt_config"]["emb_dim"] == 16
    assert meta.tokenizer and meta.label_names == ["ham", "spam"] and meta.lora["name"] == "default"
    assert meta.config["model"]["n_layers"] == 1 and "resume" not in meta.config
    assert set(ckpt[checkpoint.RNG_KEY]) >= {"python", "numpy", "torch"}
    assert checkpoint.masks(ckpt) and ckpt[checkpoint.SPARSITY_KEY]["step"] == 2
    assert set(ckpt[checkpoint.TRAIN_MEANS_KEY]) == {"loss", "acc"}


def test_a_checkpoint_of_a_newer_format_is_refused_with_the_fix(tmp_path: Path) -> None:
    ckpt = checkpoint.read(FIXTURES / "checkpoint-v0.ckpt")
    ckpt[checkpoint.METADATA_KEY]["format_version"] = checkpoint.FORMAT_VERSION + 1
    torch.save(ckpt, tmp_path / "future.ckpt")
    with pytest.raises(UserError, match=r"newer version of this pipeline.*git pull"):
        load_trained(tmp_path / "future.ckpt")


def test_the_run_record_reads_back_what_it_wrote_and_older_records(tmp_path: Path) -> None:
    record = RunRecord(run_id="a" * 32, status=Status.KILLED, error="Interrupted by SIGTERM")
    record.paths.run_dir = str(tmp_path)
    record.write(tmp_path, rank=1)
    assert (tmp_path / "run.rank1.json").is_file() and RunRecord.read(tmp_path) is None
    again = RunRecord.read(tmp_path, rank=1)
    assert again == record and again.status == "KILLED"
    written = json.loads((tmp_path / "run.rank1.json").read_text())
    assert "ui_url" not in written and written["paths"]["best_checkpoint"] is None
    # The stub a sweep writes for a trial that failed before it started.
    (tmp_path / "run.json").write_text('{"status": "FAILED", "error": "bad", "metrics": {}}')
    stub = RunRecord.read(tmp_path)
    assert stub.status is Status.FAILED and stub.paths.run_dir is None and stub.metrics == {}
