"""A short run adapts what would waste it, saying so: max_steps before the first validation
validates (and keeps its checkpoint) at the last step, and a warmup over a quarter of the run
is cut to a tenth of it, unless the command line set it (pipeline/run/length.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers import TINY, train_here

# 320 training examples in batches of 16: 20 batches an epoch, validated once an epoch.
SHORT = [*TINY, "logger=none", "export.formats=[]", "trainer.max_steps=6"]


def recorded(record: dict) -> dict:
    ckpt = torch.load(record["paths"]["last_checkpoint"], weights_only=False)
    return ckpt["pipeline"]["config"]


def test_a_run_shorter_than_an_epoch_validates_and_keeps_its_last_step(tmp_path, capsys) -> None:
    record = train_here(tmp_path / "outputs", *SHORT)
    err = capsys.readouterr().err
    assert "warning: trainer.max_steps=6 ends the run before its first validation" in err
    assert Path(record["paths"]["best_checkpoint"]).name == "epoch=0-step=6.ckpt"
    assert "val/loss" in record["metrics"]
    # The preset's 20 warmup steps would be all of the run: a tenth of it (rounded, at least 1).
    assert "optim.warmup_steps=20 takes 20 of this run's 6 optimizer steps" in err
    config = recorded(record)
    assert config["optim"]["warmup_steps"] == 1 and config["trainer"]["val_check_interval"] == 6


def test_settings_given_on_the_command_line_are_kept(tmp_path, capsys) -> None:
    given = ["optim.warmup_steps=20", "trainer.val_check_interval=1.0"]
    record = train_here(tmp_path / "outputs", *SHORT, *given)
    err = capsys.readouterr().err
    assert "kept, as it was set on the command line" in err
    assert "before its first validation" not in err
    config = recorded(record)
    assert config["optim"]["warmup_steps"] == 20 and config["trainer"]["val_check_interval"] == 1.0
    assert record["paths"]["best_checkpoint"] is None  # validated after training, as asked
