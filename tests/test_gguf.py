"""GGUF in and out, checked by readers this project did not write: transformers' GGUF loader
and llama.cpp itself (its tokenizer and its greedy decoding). Tiny models of both
architectures are written here; the real SmolLM2 is in test_real_model.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from pipeline.assembly.restore import load_trained
from pipeline.assembly.trained import Trained
from pipeline.data.chat import render_chat
from pipeline.data.tokenizer import TextTokenizer
from pipeline.errors import UserError
from pipeline.formats import export_trained
from pipeline.model.gpt import GPTConfig, GPTModel
from pipeline.weights.gguf import inspect, read_tokenizer
from tests.helpers import llama_run, randomize, tiny_llama, train_in_process

TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0"]
# Largest |logit difference| to the float32 model, measured here on these tiny random models
# (logits up to about 6): f32 2e-6, f16 0.006, bf16 0.045, q8_0 0.26, q4_0 2.1.
TOLERANCE = {"f32": 1e-4, "f16": 0.02, "bf16": 0.1, "q8_0": 0.5, "q4_0": 4.0}
TEXT = "WINNER! Call 0800 now to claim your prize. Are you free tonight?"


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    texts = ["Are you free tonight?", "WINNER! Call now to claim your prize 12345."] * 40
    return TextTokenizer.train(texts, vocab_size=300, min_frequency=1)


@pytest.fixture(scope="module")
def exports(tokenizer, tmp_path_factory) -> dict[str, tuple[torch.nn.Module, Path]]:
    """Our GPT (untied head, q/k/v biases) and a Hugging Face Llama (grouped-query attention),
    each exported at every type."""
    root = tmp_path_factory.mktemp("gguf")
    gpt = randomize(GPTModel(GPTConfig(tokenizer.vocab_size, 64, 64, 4, 2, qkv_bias=True)))
    tiny_llama(root / "llama", tokenizer)
    llama = load_trained(root / "llama").model
    out = {}
    for name, model in {"gpt2": gpt, "llama": llama}.items():
        export_trained(Trained(model, tokenizer), ["gguf"], root / name, gguf_types=TYPES)
        out[name] = (model, root / name / "gguf")
    return out


def transformers_reads(folder: Path, file: str) -> torch.nn.Module:
    config = transformers.AutoConfig.from_pretrained(folder, gguf_file=file)
    if config.model_type == "gpt2":
        # transformers reads gpt2.context_length into n_ctx but sizes wpe by n_positions.
        config.n_positions = config.n_ctx
    return transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=file, config=config, dtype=torch.float32
    ).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", TYPES)
def test_every_export_reads_back_in_transformers_and_in_ours(exports, tokenizer, arch, kind):
    model, folder = exports[arch]
    ids = torch.tensor([tokenizer.encode(TEXT)])
    with torch.no_grad():
        reference = model(ids)
        theirs = transformers_reads(folder, f"model-{kind}.gguf")(ids).logits
        back = load_trained(folder / f"model-{kind}.gguf")
        ours = back.model(ids)
    # transformers undoes llama.cpp's rotary permutation: f32 equal proves it was applied.
    assert (theirs - reference).abs().max() <= TOLERANCE[kind]
    assert torch.allclose(ours, theirs, atol=1e-4)  # both read the same numbers from the file
    assert back.model.arch == ("gpt" if arch == "gpt2" else "hf")
    assert back.tokenizer.encode(TEXT) == tokenizer.encode(TEXT)
    info = inspect(folder / f"model-{kind}.gguf")
    assert info.architecture == arch and kind.upper() in info.tensor_types


def test_the_modelfile_and_the_files_metadata(exports, tokenizer) -> None:
    _, folder = exports["gpt2"]
    modelfile = (folder / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-f32.gguf\n")
    assert 'TEMPLATE """{{ .Prompt }}"""' in modelfile
    assert 'PARAMETER stop "<|endoftext|>"' in modelfile and "PARAMETER num_ctx 64" in modelfile
    info = inspect(folder / "model-q8_0.gguf")
    assert info.get("gpt2.context_length") == 64 and info.get("tokenizer.ggml.pre") == "gpt-2"
    assert info.get("tokenizer.ggml.eos_token_id") == tokenizer.eos_id


def test_llama_cpp_tokenizes_as_we_do(exports, tokenizer) -> None:
    for arch in ("gpt2", "llama"):
        file = exports[arch][1] / "model-f16.gguf"
        for text in (TEXT, "see you at 7, 2024 or 99999 ok?", "  spaces\tand\nlines"):
            out = llama_run("llama-tokenize", "-m", str(file), "-p", text, "--ids", "--log-disable")
            assert json.loads(out.strip()) == tokenizer.encode(text), (arch, text)


def test_llama_cpp_continues_text_as_we_do(exports, tokenizer) -> None:
    """Greedy decoding: the same tokens from llama.cpp's engine and from our model."""
    prompt = "WINNER! Call"
    for arch in ("gpt2", "llama"):
        model, folder = exports[arch]
        ids = tokenizer.encode(prompt)
        ours = model.generate(torch.tensor([ids]), 8, temperature=0, eos_id=tokenizer.eos_id)
        expected = tokenizer.decode(ours[0].tolist())
        out = llama_run("llama-simple", "-m", str(folder / "model-f32.gguf"), "-n", "8", prompt)
        # llama-simple prints each piece with printf("%s"): a NUL byte ends its piece there.
        assert out.strip() == expected.replace("\x00", "").strip(), arch


def test_init_from_a_gguf_file_picks_the_architecture_without_model_hf(
    exports, tmp_path, capsys
) -> None:
    _, folder = exports["llama"]
    record = train_in_process(
        [
            "experiment=lm_demo",
            f"model.init_from={folder / 'model-q8_0.gguf'}",
            "data.max_length=32",
            "trainer.max_epochs=null",
            "trainer.max_steps=2",
            "export.formats=[gguf]",
        ],
        tmp_path,
    )
    assert record["status"] == "FINISHED" and record["task"] == "causal_lm"
    out = capsys.readouterr().out
    assert "model-q8_0.gguf: a llama GGUF file, tensors Q8_0 (" in out and "dequantized" in out
    trained = load_trained(record["paths"]["last_checkpoint"])
    assert trained.model.arch == "hf" and trained.model.hf.config.model_type == "llama"
    assert (Path(record["paths"]["exports"]["gguf"]) / "model-f16.gguf").is_file()


def test_a_chat_template_planted_in_a_gguf_file_does_not_run(tmp_path, tokenizer) -> None:
    """CVE-2024-34359: llama-cpp-python rendered a GGUF's chat template outside a sandbox, and
    a planted one ran shell commands. Ours is carried into the file and back, but rendered only
    in Jinja's sandbox, where the same payload is stopped."""
    marker = tmp_path / "pwned"
    payload = (
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
        "{% if c.__name__ == 'catch_warnings' %}"
        "{{ c()._module.__builtins__['__import__']('os').system('touch " + str(marker) + "') }}"
        "{% endif %}{% endfor %}"
    )
    planted = TextTokenizer(
        tokenizer.tokenizer,
        config_files={"tokenizer_config.json": json.dumps({"chat_template": payload})},
    )
    model = GPTModel(GPTConfig(tokenizer.vocab_size, 32, 32, 2, 1))
    export_trained(Trained(model, planted), ["gguf"], tmp_path, gguf_types=["f32"])
    template = json.loads(
        read_tokenizer(tmp_path / "gguf" / "model-f32.gguf").config_files["tokenizer_config.json"]
    )["chat_template"]
    assert template == payload
    with pytest.raises(UserError, match="tried to reach outside its sandbox"):
        render_chat(template, [{"role": "user", "content": "hi"}])
    assert not marker.exists()
    # The payload is real: plain Jinja, as a careless reader would use it, runs it.
    import jinja2

    jinja2.Template(template).render()
    assert marker.exists()
