"""Pretrained weights in every layout, and every export layout out, checked against the
libraries that read them: transformers (logits within 1e-4, fp32) and onnxruntime."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import transformers

from pipeline.assembly.model import build_model
from pipeline.assembly.restore import load_pretrained, load_trained
from pipeline.assembly.trained import Trained
from pipeline.data.tokenizer import TextTokenizer
from pipeline.errors import UserError
from pipeline.formats import export_trained
from pipeline.model.gpt import GPTModel
from pipeline.model.heads import pool_last_token
from pipeline.weights.gpt2 import save_hf
from pipeline.weights.io import read_hf_weights
from tests.helpers import TINY, app_config, randomize, tiny_llama, train_in_process

TOL = 1e-4


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    texts = ["Are you free tonight?", "WINNER! Call now to claim your prize."] * 40
    return TextTokenizer.train(texts, vocab_size=300, min_frequency=1)


def hf_gpt2(vocab: int, **config) -> torch.nn.Module:
    shape = dict(vocab_size=vocab, n_positions=64, n_embd=48, n_layer=2, n_head=4)
    return randomize(transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**shape, **config})))


def save_bin(model: torch.nn.Module, directory: Path, shards: int = 1) -> None:
    """pytorch_model.bin, or shards with pytorch_model.bin.index.json, as older transformers
    versions wrote them (transformers 5 writes only safetensors)."""
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    state = model.state_dict()
    if shards == 1:
        torch.save(state, directory / "pytorch_model.bin")
        return
    keys = list(state)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[i::shards]}
        torch.save(part, directory / name)
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def assert_same_logits(ours: torch.nn.Module, theirs: torch.nn.Module, vocab: int) -> None:
    ids = torch.randint(0, vocab, (2, 17))
    with torch.no_grad():
        a, b = ours(ids), theirs(input_ids=ids).logits
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < TOL
    assert a.abs().max().item() > 1.0


LAYOUTS = ["safetensors", "safetensors-sharded", "bin", "bin-sharded"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpt2_directory_in_every_layout_matches_transformers(tmp_path, tokenizer, layout) -> None:
    hf = hf_gpt2(tokenizer.vocab_size)
    directory = tmp_path / "gpt2"
    if layout.startswith("safetensors"):
        hf.save_pretrained(directory, max_shard_size="60KB" if "sharded" in layout else "1GB")
    else:
        save_bin(hf, directory, shards=3 if "sharded" in layout else 1)
    sharded = [p.name for p in directory.glob("*.index.json")]
    assert bool(sharded) == ("sharded" in layout)
    trained = load_trained(directory)
    assert isinstance(trained.model, GPTModel) and trained.model.cfg.n_layers == 2
    assert_same_logits(trained.model, hf, tokenizer.vocab_size)


def test_single_weight_files_in_hf_and_our_naming(tmp_path, tokenizer) -> None:
    hf = hf_gpt2(tokenizer.vocab_size)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_trained(tmp_path / "hf").model
    torch.save(ours.state_dict(), tmp_path / "ours.pth")
    for path in (tmp_path / "hf" / "model.safetensors", tmp_path / "ours.pth"):
        model = GPTModel(ours.cfg)
        from pipeline.weights.load import load_into

        load_into(model, load_pretrained(path).state, str(path))
        assert_same_logits(model.eval(), hf, tokenizer.vocab_size)


def test_init_from_gpt2_dir_takes_shape_tokenizer_and_replaces_the_head(tmp_path, tokenizer):
    hf = hf_gpt2(tokenizer.vocab_size, n_positions=128)
    hf.save_pretrained(tmp_path / "gpt2")
    # GPT-2's own tokenizer layout: vocab.json + merges.txt.
    tokenizer.tokenizer.model.save(str(tmp_path / "gpt2"))
    cfg = app_config([*TINY, f"model.init_from={tmp_path / 'gpt2'}"], tmp_path / "out")
    trained, bundle = build_model(cfg)
    model = trained.model
    assert (model.cfg.emb_dim, model.cfg.n_layers, model.cfg.context_length) == (48, 2, 128)
    assert bundle.tokenizer.vocab_size == tokenizer.vocab_size
    assert model.cfg.n_outputs == 1 and model.out_head.weight.shape == (1, 48)
    hf_blocks = hf.transformer.h[1].mlp.c_fc.weight
    assert torch.equal(model.trf_blocks[1].ff.fc1.weight, hf_blocks.t())


def test_gpt_export_sharded_onnx_and_weights_reload_everywhere(tmp_path, tokenizer) -> None:
    model = load_trained_gpt(tmp_path, tokenizer)
    out = export_trained(
        Trained(model, tokenizer), ["hf", "weights", "onnx"], tmp_path / "export", 60_000
    )
    index = json.loads((out["hf"] / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert_same_logits(
        model, transformers.GPT2LMHeadModel.from_pretrained(out["hf"]), tokenizer.vocab_size
    )
    assert (out["hf"] / "generation_config.json").is_file()
    check_onnx(out["onnx"] / "model.onnx", model, tokenizer.vocab_size)
    assert not list((tmp_path / "export").glob("**/.*.tmp"))


def load_trained_gpt(tmp_path: Path, tokenizer: TextTokenizer) -> GPTModel:
    hf = hf_gpt2(tokenizer.vocab_size)
    hf.save_pretrained(tmp_path / "src")
    return load_trained(tmp_path / "src").model


def check_onnx(path: Path, model: torch.nn.Module, vocab: int) -> None:
    session = ort.InferenceSession(str(path))
    for batch, seq in ((1, 3), (3, 11)):
        ids = torch.randint(2, vocab, (batch, seq))
        mask = torch.ones_like(ids)
        mask[0, seq - 1 :] = 0  # the first example is one token shorter
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        with torch.no_grad():
            logits = model(ids, mask)
            if not model.is_lm and logits.dim() == 3:
                logits = pool_last_token(logits, mask.sum(-1))
        assert np.abs(got - logits.numpy()).max() < TOL


def test_classifier_onnx_pools_the_last_real_token(tmp_path, tokenizer) -> None:
    from pipeline.model.gpt import GPTConfig

    model = randomize(GPTModel(GPTConfig(tokenizer.vocab_size, 32, 48, 4, 2, n_outputs=3)))
    out = export_trained(Trained(model, tokenizer, ["a", "b", "c"]), ["onnx"], tmp_path)
    check_onnx(out["onnx"] / "model.onnx", model, tokenizer.vocab_size)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "causal_lm"])
def test_model_hf_trains_a_llama_and_exports_hf_and_onnx(tmp_path, tokenizer, task) -> None:
    tiny_llama(tmp_path / "llama", tokenizer)
    record = train_in_process(
        [
            "model=hf",
            f"model.init_from={tmp_path / 'llama'}",
            f"data.task={task}",
            "trainer.max_steps=6",
            "export.formats=[hf,onnx]",
        ],
        tmp_path,
    )
    assert record["status"] == "FINISHED"
    trained = load_trained(record["paths"]["last_checkpoint"])
    hf_dir = Path(record["paths"]["exports"]["hf"])
    auto = (
        transformers.AutoModelForCausalLM
        if task == "causal_lm"
        else transformers.AutoModelForSequenceClassification
    )
    reloaded = auto.from_pretrained(hf_dir).eval()
    ids = torch.randint(2, tokenizer.vocab_size, (2, 9))
    with torch.no_grad():
        ours, theirs = trained.model.eval()(ids), reloaded(input_ids=ids).logits
    assert (ours - theirs).abs().max().item() < TOL
    check_onnx(
        Path(record["paths"]["exports"]["onnx"]) / "model.onnx", trained.model, tokenizer.vocab_size
    )
    again = load_trained(hf_dir)
    assert again.task == task and again.model.n_outputs == (None if task == "causal_lm" else 1)


def test_errors_name_keys_shapes_and_fixes(tmp_path, tokenizer) -> None:
    hf = hf_gpt2(tokenizer.vocab_size)
    state = load_trained_gpt(tmp_path, tokenizer).state_dict()
    model = GPTModel(load_trained(tmp_path / "src").model.cfg)
    from pipeline.weights.load import load_into

    missing = {k: v for k, v in state.items() if k != "trf_blocks.1.norm2.bias"}
    with pytest.raises(UserError, match=r"missing keys: trf_blocks.1.norm2.bias"):
        load_into(model, missing, "x")
    with pytest.raises(UserError, match=r"unexpected keys: extra.weight"):
        load_into(model, {**state, "extra.weight": torch.zeros(1)}, "x")
    from dataclasses import replace

    unbiased = GPTModel(replace(model.cfg, qkv_bias=False))
    with pytest.raises(UserError, match=r"unexpected keys: .*W_query.bias.*qkv_bias probably"):
        load_into(unbiased, state, "x")
    # A GPT-2-named file of another width is reported, not crashed on.
    wide = GPTModel(replace(model.cfg, emb_dim=64))
    with pytest.raises(
        UserError, match=r"tok_emb.weight \(296, 48\) in the file vs \(296, 64\).*emb_dim"
    ):
        load_into(wide, hf.state_dict(), "gpt2.safetensors")
    # A Llama directory given to a GPT preset says which model group reads it.
    tiny_llama(tmp_path / "llama", tokenizer)
    with pytest.raises(UserError, match=r"model=hf model.init_from="):
        load_pretrained(tmp_path / "llama")
    # A shard named by the index but missing.
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="60KB")
    next((tmp_path / "sharded").glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(UserError, match=r"model-00002-of-\d+.safetensors does not exist"):
        read_hf_weights(tmp_path / "sharded")


@pytest.mark.slow
def test_gpt2_small_round_trip_and_load_times(tmp_path: Path) -> None:
    """A 124M GPT-2-shaped random checkpoint: load from safetensors and from .bin, export,
    reload in transformers; prints the two load times."""
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    hf.save_pretrained(tmp_path / "st")
    save_bin(hf, tmp_path / "bin")
    timings = {}
    for layout in ("st", "bin"):
        start = time.perf_counter()
        model = load_trained(tmp_path / layout).model
        timings[layout] = time.perf_counter() - start
    assert model.num_parameters() == 124_439_808
    save_hf(model, tmp_path / "export")
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "export").eval()
    ids = torch.randint(0, 50257, (1, 24))
    with torch.no_grad():
        diff = (model.eval()(ids) - again(input_ids=ids).logits).abs().max().item()
    assert diff < TOL
    print(f"\n124M load: safetensors {timings['st']:.2f}s, pytorch_model.bin {timings['bin']:.2f}s")
