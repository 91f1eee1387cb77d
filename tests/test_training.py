"""Training in-process (faster than the CLI): multi-class, bf16 autocast, accumulation,
and the optimizer's parameter groups."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.model.gpt import GPTConfig, GPTModel
from pipeline.run.module import param_groups
from tests.helpers import train_in_process


def three_class_file(path: Path, n: int = 240) -> Path:
    words = {"sport": ["goal", "match", "team"], "food": ["pizza", "soup", "bread"]}
    words["weather"] = ["rain", "sunny", "wind"]
    rng = random.Random(0)
    lines = []
    for _ in range(n):
        topic = rng.choice(sorted(words))
        text = " ".join(rng.choice(words[topic]) for _ in range(4)) + " today"
        lines.append(json.dumps({"text": text, "topic": topic}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_multiclass_bf16_with_accumulation_stops_at_max_steps(tmp_path: Path) -> None:
    data = three_class_file(tmp_path / "topics.jsonl")
    record = train_in_process(
        [
            "data=jsonl",
            f"data.path={data}",
            "data.label_column=topic",
            "data.tokenizer.vocab_size=300",
            "trainer.precision=bf16-mixed",
            "trainer.max_steps=12",
            "optim.accumulate_grad_batches=2",
            "optim.lr=3e-3",
            "optim.warmup_steps=2",
        ],
        tmp_path,
    )
    assert record["status"] == "FINISHED"
    # 12 optimizer steps of 2 micro-batches each; the checkpoint names count optimizer steps.
    assert Path(record["paths"]["last_checkpoint"]).is_file()
    ckpt = torch.load(record["paths"]["last_checkpoint"], weights_only=True)
    assert ckpt["global_step"] == 12
    assert record["metrics"]["test/acc"] > 0.6  # three classes: chance is 1/3
    config = json.loads((Path(record["paths"]["run_dir"]) / "export/hf/config.json").read_text())
    assert config["id2label"] == {"0": "food", "1": "sport", "2": "weather"}


def test_weight_decay_only_on_linear_weights() -> None:
    model = GPTModel(GPTConfig(vocab_size=50, context_length=8, emb_dim=16, n_heads=2, n_layers=1))
    decay, no_decay = (g["params"] for g in param_groups(model, 0.1))
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)} - {
        id(model.tok_emb.weight)
    }
    assert {id(p) for p in decay} == linear_weights
    assert id(model.tok_emb.weight) in {id(p) for p in no_decay}  # tied head: an embedding
    every = {id(p) for p in model.parameters()}
    assert {id(p) for p in decay} | {id(p) for p in no_decay} == every


def test_weight_decay_reaches_transformers_conv1d_weights() -> None:
    import transformers

    config = transformers.GPT2Config(vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2)
    decay, _ = (g["params"] for g in param_groups(transformers.GPT2LMHeadModel(config), 0.1))
    assert len(decay) == 4  # c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj


def test_resume_refuses_a_checkpoint_outside_a_run_folder(tmp_path: Path) -> None:
    import pytest

    from pipeline.errors import UserError
    from pipeline.run.resume import locate_resume

    stray = tmp_path / "backups" / "last.ckpt"
    stray.parent.mkdir()
    stray.write_bytes(b"x")
    with pytest.raises(UserError, match="inside a run's checkpoints/ folder"):
        locate_resume(str(stray), tmp_path, "gpt-finetune")
    with pytest.raises(UserError, match="resume=auto found no unfinished run"):
        locate_resume("auto", tmp_path, "gpt-finetune")


def test_adamw_is_fused_and_steps_like_the_loop_version() -> None:
    from pipeline.config.optim import OptimConfig
    from pipeline.run.module import build_optimizer

    o = OptimConfig(name="adamw", lr=1e-2, weight_decay=0.1, batch_size=8)
    torch.manual_seed(0)
    fused_model = GPTModel(GPTConfig(50, 16, 16, 2, 1))
    loop_model = GPTModel(GPTConfig(50, 16, 16, 2, 1))
    loop_model.load_state_dict(fused_model.state_dict())
    start = fused_model.tok_emb.weight.detach().clone()
    fused, loop = build_optimizer(fused_model, o), build_optimizer(loop_model, o, fused=False)
    assert fused.defaults["fused"] is True and not loop.defaults["fused"]
    ids = torch.randint(0, 50, (2, 8))
    for model, optimizer in ((fused_model, fused), (loop_model, loop)):
        for _ in range(3):
            model(ids).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(fused_model.parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(fused_model.tok_emb.weight, start)


def test_bf16_mixed_clips_the_fused_optimizer_s_gradients(tmp_path: Path) -> None:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from pipeline.config.optim import OptimConfig
    from pipeline.data.loader import Collator
    from pipeline.run.module import GPTLightningModule

    torch.manual_seed(0)
    model = GPTModel(GPTConfig(50, 16, 16, 2, 1))
    o = OptimConfig(name="adamw", lr=1e-3, weight_decay=0.1, batch_size=4)
    module = GPTLightningModule(model, o)
    rows = [(torch.randint(0, 50, (9,)).tolist(), None) for _ in range(4)]
    loader = DataLoader(rows, batch_size=4, collate_fn=Collator("causal_lm", 0, False))
    trainer = pl.Trainer(
        precision="bf16-mixed",
        gradient_clip_val=1e-3,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader)
    assert trainer.optimizers[0].defaults["fused"] is True
    # The last step's gradients stay in place: clipped to the norm asked for.
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm.item() == pytest.approx(1e-3, rel=1e-3)


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts the Python-level reads of a tensor's value on the host (`.item()`, `float(t)`,
    `if t:`, ...): on a GPU each one waits for the device to finish its queued work."""

    READS = frozenset({"item", "tolist", "numpy", "__float__", "__int__", "__bool__"})

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") in self.READS
        return func(*args, **(kwargs or {}))


def test_training_steps_between_logged_steps_read_nothing_back_from_the_device(
    tmp_path: Path,
) -> None:
    """The issue's "no host syncs in the step": with the progress bar and the NaN-loss guard on,
    6 more steps (none of them logged) add no read of a device value to the run."""
    reads = {}
    for steps in (6, 12):
        (tmp_path / str(steps)).mkdir()
        with HostReads() as mode:
            train_in_process(
                [
                    f"trainer.max_steps={steps}",
                    "trainer.log_every_n_steps=50",
                    "trainer.enable_progress_bar=true",
                ],
                tmp_path / str(steps),
            )
        reads[steps] = mode.count
    assert reads[6] > 0  # the counter sees the reads at validation and the end of the run
    assert reads[12] == reads[6]
