"""A real pretrained LLM: SmolLM2-135M-Instruct (Llama architecture, Q4_1 GGUF), fetched once
by pipeline.fetch into the user cache, read as transformers and llama.cpp read it, fine-tuned
with LoRA for a few steps, exported as q8_0 and f16, and read back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import transformers

from pipeline.assembly.restore import load_trained
from pipeline.fetch import fetch_smollm2
from tests.helpers import llama_run, train_in_process

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt-finetune-pipeline"
PROMPTS = ["The capital of France is", "In 2024, 12345 people visited 3 museums.", "Hi!\n\nBye"]
CHAT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return fetch_smollm2(CACHE / "models")


@pytest.fixture(scope="module")
def ours(smollm2):
    return load_trained(smollm2)


def test_smollm2_reads_as_transformers_and_llama_cpp_read_it(smollm2, ours) -> None:
    transformers.logging.set_verbosity_error()
    folder, file = smollm2.parent, smollm2.name
    # The weights are dequantized by transformers' own GGUF loader (a second load to compare
    # with would cost 20 s of the suite); the tokenizer is ours, rebuilt from the file.
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=file)
    for prompt in PROMPTS:
        ids = ours.tokenizer.encode(prompt)
        assert ids == tokenizer(prompt)["input_ids"], prompt
        # llama.cpp splits digits one by one ("smollm" pre-tokenizer); so do we.
        out = llama_run(
            "llama-tokenize", "-m", str(smollm2), "-p", prompt, "--ids", "--log-disable"
        )
        assert out.strip() == str(ids), prompt
    assert ours.model.hf.config.num_hidden_layers == 30 and ours.tokenizer.eos == "<|im_end|>"
    answer = ours.model.generate(
        torch.tensor([ours.tokenizer.encode(CHAT)]), 8, temperature=0, eos_id=ours.tokenizer.eos_id
    )
    assert "Paris" in ours.tokenizer.decode(answer[0].tolist())


def test_smollm2_fine_tuned_with_lora_exports_gguf_that_reads_back(smollm2, ours, tmp_path):
    record = train_in_process(
        [
            "experiment=lm_demo",
            "lora=default",
            f"model.init_from={smollm2}",
            "data.synthetic_examples=100",
            "data.max_length=48",
            "optim.batch_size=4",
            "trainer.max_epochs=null",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "export.formats=[gguf]",
            "export.gguf.types=[q8_0,f16]",
        ],
        tmp_path,
    )
    assert record["status"] == "FINISHED" and record["trainable_parameters"] < 1_000_000
    folder = Path(record["paths"]["exports"]["gguf"])
    merged = load_trained(record["paths"]["exports"]["merged"]).model
    ids = torch.tensor([ours.tokenizer.encode(CHAT)])
    with torch.no_grad():
        reference = merged(ids)
        # f16 read back by transformers; q8_0 (next) by llama.cpp, which serves it.
        back = transformers.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file="model-f16.gguf", dtype=torch.float32
        ).eval()
        logits = back(ids).logits
        assert (logits - reference).abs().max() < 0.1
        assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9
    modelfile = (folder / "Modelfile").read_text()
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "<|im_start|>assistant" in modelfile
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in modelfile
    answer = llama_run("llama-simple", "-m", str(folder / "model-q8_0.gguf"), "-n", "8", CHAT)
    assert "Paris" in answer


def test_a_judge_served_over_http_scores_the_answers(ours, tmp_path) -> None:
    """A real OpenAI-compatible server on 127.0.0.1 (transformers serve, SmolLM2 as the
    judge) scores each answer; the scores are numbers from 0 to 100."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from pipeline.evaluation.judge import judge_all
    from pipeline.formats import export_trained

    folder = export_trained(ours, ["hf"], tmp_path)["hf"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve = Path(sys.executable).parent / "transformers"
    server = subprocess.Popen(
        [str(serve), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.5)
        rows = [
            {"prompt": "What is the capital of France?", "reference": "Paris", "answer": a}
            for a in ("Paris", "The capital of France is Paris.", "Berlin")
        ]
        result = judge_all(rows, url, str(folder), timeout=120)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert result["judge_scored"] >= 1
    assert all(r["judge_score"] is None or 0 <= r["judge_score"] <= 100 for r in rows)
    assert 0 <= result["judge_score"] <= 100
