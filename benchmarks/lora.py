"""LoRA versus full fine-tuning, and our LoRA versus transformers + PEFT (issue figure 4).

Four configurations train the same GPT-2-style causal LM (same shape, batch, sequence length,
AdamW, fp32). Each repeat of each configuration is its own subprocess, so its peak memory is
that configuration's alone; repeats are interleaved. LoRA is r=8, alpha=16 on the attention
projections: ours W_query, W_key, W_value, out_proj; transformers' GPT-2 the same projections
as c_attn (fused q/k/v) and attn.c_proj.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import Context, Figure, interleave, ratios

TITLE = "LoRA versus full fine-tuning"
CONFIGS = ["ours-full", "ours-lora", "hf-full", "hf-lora"]
# (vocab, context, emb, heads, layers), batch, seq, warmup, steps, rounds
SIZES = {
    "smoke": ((256, 64, 64, 2, 2), 2, 32, 1, 2, 1),
    "quick": ((8192, 256, 256, 4, 4), 4, 128, 1, 3, 1),
    "full": ((8192, 256, 512, 8, 8), 4, 128, 1, 3, 2),
}


def build(name: str, shape: tuple[int, ...]):
    from benchmarks.common import ours, transformers_gpt2
    from pipeline.model.gpt import GPTConfig

    vocab, context, emb, heads, layers = shape
    gpt = GPTConfig(vocab, context, emb, heads, layers, qkv_bias=True)
    if name.startswith("ours"):
        model, forward = ours(gpt)
        if name.endswith("lora"):
            from pipeline.config.lora import LoraConfig
            from pipeline.lora import apply_lora

            model = apply_lora(model, LoraConfig(name="bench", r=8, alpha=16))
            forward = model
        return model, forward
    model, forward = transformers_gpt2(gpt)
    if name.endswith("lora"):
        from peft import LoraConfig, get_peft_model

        peft_config = LoraConfig(
            r=8, lora_alpha=16, target_modules=["c_attn", "attn.c_proj"], fan_in_fan_out=True
        )
        model = get_peft_model(model, peft_config)
        return model, lambda ids: model(input_ids=ids).logits
    return model, forward


def peak_rss_mb() -> float:
    """This process's peak resident memory. Not getrusage's ru_maxrss: Linux carries it over
    from the parent across fork and exec, so a child would report the runner's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(name: str, mode: str) -> dict:
    """One configuration in this process: median step time and peak memory."""
    import torch
    import torch.nn.functional as F

    shape, batch, seq, warmup, steps, _ = SIZES[mode]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model, forward = build(name, shape)
    model.train().to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, shape[0], (batch, seq + 1), device=device)
    rss_built = peak_rss_mb()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        logits = forward(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, shape[0]), ids[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = peak_rss_mb()
    return {
        "trainable": sum(p.numel() for p in params),
        "total": sum(p.numel() for p in model.parameters()),
        "step_s": statistics.median(times),
        "peak_mb": (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak),
        "train_mem_mb": peak - rss_built,
        "device": device,
    }


def run(ctx: Context) -> list[Figure]:
    shape, batch, seq, _, steps, rounds = ctx.pick(SIZES)
    records: dict[str, list[dict]] = {name: [] for name in CONFIGS}

    def case(name: str):
        def measure() -> float:
            if ctx.mode == "smoke":
                # The smoke test checks the figures' making, not memory apart: no process each.
                records[name].append(child(name, ctx.mode))
                return records[name][-1]["step_s"]
            cmd = [sys.executable, "-m", "benchmarks.lora", name, ctx.mode]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            records[name].append(json.loads(out.strip().splitlines()[-1]))
            return records[name][-1]["step_s"]

        return measure

    s = interleave({name: case(name) for name in CONFIGS}, rounds)
    first = {name: r[0] for name, r in records.items()}
    peak_kind = "CUDA max allocated" if first["ours-full"]["device"] == "cuda" else "peak RSS"
    vocab, _, emb, heads, layers = shape
    figures = []
    for name in CONFIGS:
        r = first[name]
        figures += [
            Figure(
                f"{name} step",
                "ms",
                [1000 * x for x in s[name]],
                note=f"{r['trainable']:,} of {r['total']:,} parameters train",
            ),
            Figure(f"{name} {peak_kind}", "MB", [x["peak_mb"] for x in records[name]]),
        ]
        if peak_kind == "peak RSS":
            figures.append(
                Figure(
                    f"{name} training memory (peak RSS - RSS once built)",
                    "MB",
                    [x["train_mem_mb"] for x in records[name]],
                )
            )
    figures += [
        Figure(
            "ours: LoRA step / full step",
            "ratio",
            ratios(s["ours-lora"], s["ours-full"]),
            note=f"{layers} layers, {emb} dims, {heads} heads, vocab {vocab}, batch {batch}x{seq}, "
            f"median of {steps} steps per repeat",
        ),
        Figure(
            "LoRA throughput: ours / transformers + PEFT",
            "ratio",
            ratios(s["hf-lora"], s["ours-lora"]),
        ),
        Figure(
            "full throughput: ours / transformers", "ratio", ratios(s["hf-full"], s["ours-full"])
        ),
    ]
    return figures


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], sys.argv[2])))
