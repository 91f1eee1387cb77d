"""GGUF and a real model (issue 14): SmolLM2-135M-Instruct from its Q4_1 GGUF file.

- Seconds to load the file into the pipeline (parse, dequantize, tokenizer) and to export it at
  each type, with the file sizes.
- Perplexity on real English text, CPython's LICENSE.txt (it ships with every Python), in
  non-overlapping windows: the dequantized model in our pipeline, and each export read back by
  transformers; and llama.cpp's own perplexity of each file where `make llama-cpp` built it
  (llama.cpp scores the second half of each chunk, so its figures compare with each other, not
  with ours).
- A LoRA step (r=8 on the attention projections) in our pipeline against transformers + PEFT
  in a plain loop, same batch: target >= 0.97.

The smoke mode (the test suite's) uses a tiny random GPT instead of the real model.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import (
    Context,
    Figure,
    interleave,
    pipeline_config,
    pipeline_segment,
    plain_segment,
    random_batches,
    ratios,
)

TITLE = "GGUF and the real SmolLM2"
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0"]
# text tokens, window, LoRA batch x seq, LoRA steps (after 1 warmup), rounds
SIZES = {
    "smoke": (256, 64, (2, 32), 2, 1),
    "quick": (2048, 256, (4, 128), 3, 1),
    "full": (8192, 512, (8, 128), 4, 2),
}
TEXT = Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
TEXT = TEXT / "LICENSE.txt"


def run(ctx: Context) -> list[Figure]:
    n_tokens, window, lora_batch, steps, rounds = ctx.pick(SIZES)
    start = time.perf_counter()
    trained, source = _model(ctx)
    load_s = time.perf_counter() - start
    ids = trained.tokenizer.encode(TEXT.read_text())[:n_tokens]
    figures = [Figure(f"load {source.name} into the pipeline", "s", [load_s])]
    reference = perplexity(trained.model, ids, window)
    figures.append(Figure("perplexity, dequantized in our pipeline", "ppl", [reference]))
    figures += _exports(ctx, trained, ids, window, reference)
    figures += _llama_cpp(ctx, source, window)
    if ctx.mode != "smoke":
        figures += _lora_step(trained.model, lora_batch, steps, rounds)
    return figures


def _model(ctx: Context):
    from pipeline.assembly.restore import load_trained
    from pipeline.assembly.trained import Trained
    from pipeline.data.tokenizer import TextTokenizer
    from pipeline.fetch import fetch_smollm2
    from pipeline.formats import export_trained
    from pipeline.model.gpt import GPTConfig, GPTModel

    if ctx.mode != "smoke":
        source = fetch_smollm2(Path.home() / ".cache" / "gpt-finetune-pipeline" / "models")
        return load_trained(source), source
    tokenizer = TextTokenizer.train([TEXT.read_text()], 600, 2)
    model = Trained(GPTModel(GPTConfig(tokenizer.vocab_size, 64, 64, 2, 2)), tokenizer)
    export_trained(model, ["gguf"], ctx.workdir / "tiny", gguf_types=["f32"])
    source = ctx.workdir / "tiny" / "gguf" / "model-f32.gguf"
    return load_trained(source), source


@torch.no_grad()
def perplexity(forward, ids: list[int], window: int) -> float:
    """exp(mean next-token loss) over non-overlapping windows of the text."""
    losses, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[start : start + window + 1]])
        if chunk.shape[1] < 2:
            break
        out = forward(chunk[:, :-1])
        logits = getattr(out, "logits", out)
        loss = F.cross_entropy(logits[0].float(), chunk[0, 1:], reduction="sum")
        losses, count = losses + float(loss), count + chunk.shape[1] - 1
    return math.exp(losses / count)


def _exports(ctx: Context, trained, ids: list[int], window: int, reference: float) -> list:
    import transformers

    from pipeline.formats import export_trained

    figures = []
    folder = ctx.workdir / "export"
    for kind in TYPES:
        start = time.perf_counter()
        export_trained(trained, ["gguf"], folder, gguf_types=[kind])
        seconds = time.perf_counter() - start
        file = folder / "gguf" / f"model-{kind}.gguf"
        config = transformers.AutoConfig.from_pretrained(file.parent, gguf_file=file.name)
        if config.model_type == "gpt2":
            config.n_positions = config.n_ctx  # transformers sizes wpe by n_positions
        back = transformers.AutoModelForCausalLM.from_pretrained(
            file.parent, gguf_file=file.name, config=config, dtype=torch.float32
        ).eval()
        ppl = perplexity(back, ids, window)
        size = file.stat().st_size / 1e6
        figures += [
            Figure(f"export {kind}", "s", [seconds], note=f"{size:.1f} MB"),
            Figure(
                f"perplexity, {kind} export read by transformers",
                "ppl",
                [ppl],
                note=f"{size:.1f} MB; {100 * (ppl / reference - 1):+.2f}% against ours",
            ),
        ]
    return figures


def _llama_cpp(ctx: Context, source: Path, window: int) -> list:
    from tests.helpers import LLAMA_CPP_BIN

    tool = LLAMA_CPP_BIN / "llama-perplexity"
    if not tool.is_file() or ctx.mode == "smoke":
        return []
    figures = []
    files = {"original": source}
    files |= {kind: ctx.workdir / "export" / "gguf" / f"model-{kind}.gguf" for kind in TYPES}
    for kind, file in files.items():
        done = subprocess.run(
            [str(tool), "-m", str(file), "-f", str(TEXT), "-c", str(window), "--chunks", "8"],
            capture_output=True,
            text=True,
        )
        found = re.search(r"Final estimate: PPL = ([\d.]+)", done.stdout + done.stderr)
        if found:
            name = f"perplexity, {kind} file in llama.cpp ({window}-token chunks)"
            figures.append(Figure(name, "ppl", [float(found[1])]))
    return figures


def _lora_step(model, lora_batch: tuple[int, int], steps: int, rounds: int) -> list:
    """Our pipeline's LoRA step on SmolLM2 against transformers + PEFT in a plain loop."""
    import copy

    from peft import LoraConfig, get_peft_model

    from pipeline.config.lora import LoraConfig as OurLora
    from pipeline.lora import apply_lora

    batch, seq = lora_batch
    cfg = pipeline_config(
        ["experiment=lm_demo", "trainer=cpu", "trainer.enable_progress_bar=false"], Path("/tmp")
    )
    loader = random_batches(model.hf.config.vocab_size, batch, seq, steps + 1)
    ours = apply_lora(copy.deepcopy(model), OurLora(name="bench", r=8, alpha=16))
    theirs = get_peft_model(
        copy.deepcopy(model.hf),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    )
    cases = {
        "ours": lambda: pipeline_segment(ours, loader, cfg, 1, tracking_on=False),
        "theirs": lambda: plain_segment(
            theirs, lambda x: theirs(input_ids=x).logits, loader, cfg, 1
        ),
    }
    s = interleave(cases, rounds)
    note = f"batch {batch}x{seq}, r=8 on q/k/v/o, fp32"
    return [
        Figure("SmolLM2 LoRA step, our pipeline", "s", s["ours"], note=note),
        Figure("SmolLM2 LoRA step, transformers + PEFT plain loop", "s", s["theirs"]),
        Figure(
            "SmolLM2 LoRA throughput: ours / transformers + PEFT",
            "ratio",
            ratios(s["theirs"], s["ours"]),
            target=0.97,
        ),
    ]
