"""LoRA through PEFT: what trains, merging, the adapter export loaded by PEFT onto
transformers' models, checkpoints, and config errors."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import peft
import pytest
import torch
import transformers

from pipeline.assembly.restore import load_trained
from pipeline.assembly.trained import Trained
from pipeline.config.lora import LoraConfig
from pipeline.data.tokenizer import TextTokenizer
from pipeline.errors import UserError
from pipeline.formats import export_trained
from pipeline.lora import apply_lora, plain_copy
from pipeline.model.gpt import GPTConfig, GPTModel
from pipeline.model.heads import pool_last_token
from tests.helpers import TINY, app_config, kill_at_step, train_here, train_in_process


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.train(["call me later", "WIN a prize now"] * 30, 300, 1)


def lora_cfg(**overrides) -> LoraConfig:
    return LoraConfig.model_validate({"name": "test", "r": 4, "alpha": 8, **overrides})


def noisy(model: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Random values in every trainable tensor (adapters, DoRA magnitudes, heads), so the
    adapters change the output and parity checks are not comparisons at B=0."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * scale)
    return model.eval()


def gpt(tokenizer, **overrides) -> GPTModel:
    cfg = GPTConfig(tokenizer.vocab_size, 32, 48, 4, 2, qkv_bias=True, **overrides)
    torch.manual_seed(1)
    return GPTModel(cfg)


def our_logits(model, ids, lengths) -> torch.Tensor:
    with torch.no_grad():
        logits = model(ids)
    return logits if model.is_lm else pool_last_token(logits, lengths)


VARIANTS = {
    "attention": {},
    "query-value": {"target_modules": ["W_query", "W_value"]},
    "all-linear-rslora": {"target_modules": "all-linear", "use_rslora": True},
    "dora": {"use_dora": True, "target_modules": ["W_key", "fc2"]},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("n_outputs", [None, 1], ids=["lm", "binary"])
def test_adapter_loads_in_peft_onto_the_hf_export(tmp_path, tokenizer, variant, n_outputs):
    model = noisy(apply_lora(gpt(tokenizer, n_outputs=n_outputs), lora_cfg(**VARIANTS[variant])))
    labels = [] if n_outputs is None else ["ham", "spam"]
    out = export_trained(Trained(model, tokenizer, labels), ["hf", "adapter"], tmp_path)
    base_cls = (
        transformers.GPT2LMHeadModel
        if n_outputs is None
        else transformers.GPT2ForSequenceClassification
    )
    reloaded = peft.PeftModel.from_pretrained(
        base_cls.from_pretrained(out["hf"]), out["adapter"]
    ).eval()
    ids = torch.randint(2, tokenizer.vocab_size, (3, 10))
    ids[1, 7:] = tokenizer.pad_id
    lengths = torch.tensor([10, 7, 10])
    with torch.no_grad():
        theirs = reloaded(input_ids=ids).logits
    ours = our_logits(model, ids, lengths)
    if n_outputs is None:  # compare real positions only
        ours, theirs = ours[lengths == 10], theirs[lengths == 10]
    assert (ours - theirs).abs().max().item() < 1e-4
    plain = our_logits(plain_copy(model, merge=False), ids, lengths)
    assert (ours - (plain if n_outputs else plain[lengths == 10])).abs().max() > 1e-3
    config = json.loads((out["adapter"] / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"


def test_merged_equals_unmerged_and_keeps_its_own_folder(tmp_path, tokenizer) -> None:
    lora = lora_cfg(target_modules="all-linear")
    model = noisy(apply_lora(gpt(tokenizer, n_outputs=3), lora), scale=0.05)
    ids = torch.randint(2, tokenizer.vocab_size, (2, 9))
    lengths = torch.tensor([9, 9])
    merged = plain_copy(model, merge=True)
    assert isinstance(merged, GPTModel)
    ours = our_logits(model, ids, lengths)
    assert (ours - our_logits(merged, ids, lengths)).abs().max() < 1e-5
    base = our_logits(plain_copy(model, merge=False), ids, lengths)
    assert (ours - base).abs().max() > 1e-2  # the adapters do change the output
    out = export_trained(
        Trained(model, tokenizer, ["a", "b", "c"]), ["merged", "adapter"], tmp_path
    )
    merged_files = {p.name for p in out["merged"].iterdir()}
    assert "model.safetensors" in merged_files and not any("adapter" in f for f in merged_files)
    reloaded = transformers.GPT2ForSequenceClassification.from_pretrained(out["merged"]).eval()
    with torch.no_grad():
        theirs = reloaded(input_ids=ids).logits
    assert (theirs - our_logits(model, ids, lengths)).abs().max() < 1e-4


def test_target_pattern_that_matches_nothing_lists_the_modules(tokenizer) -> None:
    with pytest.raises(UserError) as info:
        apply_lora(gpt(tokenizer), lora_cfg(target_modules=["q_proj"]))
    message = str(info.value)
    assert "'q_proj' matches no module" in message
    assert "trf_blocks.N.att.W_query" in message and "trf_blocks.N.ff.fc2" in message


def test_adapter_export_without_lora_is_refused(tmp_path, tokenizer) -> None:
    with pytest.raises(UserError, match="no LoRA adapters"):
        export_trained(Trained(gpt(tokenizer), tokenizer), ["adapter"], tmp_path)


def hf_gpt2_dir(directory: Path, tokenizer: TextTokenizer) -> Path:
    config = transformers.GPT2Config(
        vocab_size=tokenizer.vocab_size, n_positions=128, n_embd=32, n_layer=2, n_head=2
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save(directory)
    return directory


@pytest.mark.slow
def test_lora_run_trains_only_adapters_and_head_base_stays_bit_identical(tmp_path) -> None:
    from pipeline.data.preparation import build_data

    warm = app_config([*TINY, "logger=none"], tmp_path / "out")
    tokenizer = build_data(warm.data, warm.seed).tokenizer
    base_dir = hf_gpt2_dir(tmp_path / "gpt2", tokenizer)
    record = train_in_process(
        [
            "lora=default",
            f"model.init_from={base_dir}",
            "trainer.max_epochs=1",
        ],
        tmp_path,
    )
    assert record["trainable_parameters"] < record["num_parameters"] / 5
    trained = load_trained(record["paths"]["last_checkpoint"]).model
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    base = transformers.GPT2LMHeadModel.from_pretrained(base_dir)
    ours = trained.base_model.model
    # The frozen pretrained weights did not move by a single bit.
    c_attn = base.transformer.h[1].attn.c_attn.weight
    assert torch.equal(ours.trf_blocks[1].att.W_key.base_layer.weight, c_attn[:, 32:64].t())
    assert torch.equal(ours.trf_blocks[0].ff.fc1.weight, base.transformer.h[0].mlp.c_fc.weight.t())
    assert torch.equal(ours.tok_emb.weight, base.transformer.wte.weight)
    exports = record["paths"]["exports"]
    assert {"hf", "adapter", "merged"} <= set(exports)
    # The adapter also loads onto the original init_from directory (GPT-2 LM -> classifier).
    reloaded = peft.PeftModel.from_pretrained(
        transformers.GPT2ForSequenceClassification.from_pretrained(
            base_dir, num_labels=1, pad_token_id=tokenizer.pad_id
        ),
        exports["adapter"],
    ).eval()
    ids = torch.randint(2, tokenizer.vocab_size, (2, 12))
    with torch.no_grad():
        theirs = reloaded(input_ids=ids).logits
    assert (theirs - our_logits(trained, ids, torch.tensor([12, 12]))).abs().max() < 1e-4


@pytest.mark.slow
def test_lora_on_an_hf_llama_exports_a_peft_adapter(tmp_path, tokenizer) -> None:
    from tests.helpers import tiny_llama

    tiny_llama(tmp_path / "llama", tokenizer)
    record = train_in_process(
        [
            "model=hf",
            f"model.init_from={tmp_path / 'llama'}",
            "lora=dora",
            "trainer.max_steps=4",
        ],
        tmp_path,
    )
    model = noisy(load_trained(record["paths"]["last_checkpoint"]).model)
    out = export_trained(
        Trained(model, tokenizer, ["ham", "spam"]), ["hf", "adapter"], tmp_path / "e"
    )
    reloaded = peft.PeftModel.from_pretrained(
        transformers.AutoModelForSequenceClassification.from_pretrained(out["hf"]), out["adapter"]
    ).eval()
    ids = torch.randint(2, tokenizer.vocab_size, (2, 8))
    with torch.no_grad():
        assert (reloaded(input_ids=ids).logits - model(ids)).abs().max() < 1e-4


@pytest.mark.slow
def test_killed_lora_run_resumes_to_the_same_weights_with_a_small_checkpoint(tmp_path) -> None:
    """SIGKILL after an early step checkpoint, resume=auto, and compare with a run that was
    never interrupted: same weights, same MLflow run, no metric step logged twice."""
    from mlflow.tracking import MlflowClient

    from pipeline.data.preparation import build_data

    warm = app_config([*TINY, "logger=none"], tmp_path / "warm")
    base_dir = hf_gpt2_dir(tmp_path / "gpt2", build_data(warm.data, warm.seed).tokenizer)
    args = [*TINY, "lora=default", f"model.init_from={base_dir}"]
    args += ["trainer.checkpoint.every_n_train_steps=5"]  # killed at step 5, well before the end

    straight = train_here(tmp_path / "a", *args)  # in this process: only the killed one is not
    outputs = tmp_path / "b"
    kill_at_step(outputs, 5, signal.SIGKILL, *args).wait(timeout=60)
    (run_dir,) = (p.parent for p in outputs.glob("runs/*/*/*/run.json"))
    first = json.loads((run_dir / "run.json").read_text())
    assert first["status"] == "RUNNING"
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all("lora_" in k or "modules_to_save" in k for k in state)
    weight_bytes = sum(v.numel() * v.element_size() for v in state.values())
    assert weight_bytes < (base_dir / "model.safetensors").stat().st_size / 4

    train_here(outputs, *args, "resume=auto")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["run_id"] == first["run_id"] and record["resumed"] == 1
    assert record["status"] == "FINISHED"
    reference = torch.load(Path(straight["paths"]["last_checkpoint"]), weights_only=True)
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == reference["global_step"]
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][key], value, atol=1e-6, rtol=1e-5)
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    assert client.get_run(first["run_id"]).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(first["run_id"], "train/loss_step")]
    assert len(steps) == len(set(steps)) and max(steps) == final["global_step"] - 1
