"""LoRA versus full fine-tuning, and our LoRA versus transformers + PEFT, on one machine.

    python benchmarks/lora.py [--quick] [--out benchmarks/results-lora.md]

Every configuration trains the same GPT-2-style causal LM (same shape, batch, sequence length,
AdamW, fp32) in its own subprocess, so peak memory is that configuration's alone. A step is
forward + backward + optimizer step on random tokens; the first steps are warm-up. LoRA is r=8,
alpha=16 on the attention projections: ours W_query, W_key, W_value, out_proj; transformers'
GPT-2 the same projections as c_attn (fused q/k/v) and attn.c_proj.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = {"vocab": 8192, "context": 256, "emb": 512, "heads": 8, "layers": 8}
CONFIGS = ["ours-full", "ours-lora", "hf-full", "hf-lora"]


def build(name: str):

    if name.startswith("ours"):
        sys.path.insert(0, str(ROOT))
        from pipeline.config import LoraConfig
        from pipeline.lora import apply_lora
        from pipeline.model.gpt import GPTConfig, GPTModel

        model = GPTModel(
            GPTConfig(
                SHAPE["vocab"],
                SHAPE["context"],
                SHAPE["emb"],
                SHAPE["heads"],
                SHAPE["layers"],
                qkv_bias=True,
            )
        )
        if name.endswith("lora"):
            model = apply_lora(model, LoraConfig(name="bench", r=8, alpha=16))
        return model, lambda ids: model(ids)
    import transformers
    from peft import LoraConfig, get_peft_model

    config = transformers.GPT2Config(
        vocab_size=SHAPE["vocab"],
        n_positions=SHAPE["context"],
        n_embd=SHAPE["emb"],
        n_head=SHAPE["heads"],
        n_layer=SHAPE["layers"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="sdpa",
    )
    model = transformers.GPT2LMHeadModel(config)
    if name.endswith("lora"):
        peft_config = LoraConfig(
            r=8, lora_alpha=16, target_modules=["c_attn", "attn.c_proj"], fan_in_fan_out=True
        )
        model = get_peft_model(model, peft_config)
    return model, lambda ids: model(input_ids=ids).logits


def child(name: str, batch: int, seq: int, warmup: int, steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model, forward = build(name)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, SHAPE["vocab"], (batch, seq))
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        logits = forward(ids)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, SHAPE["vocab"]), ids[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step = statistics.median(times)
    return {
        "config": name,
        "trainable": sum(p.numel() for p in params),
        "total": sum(p.numel() for p in model.parameters()),
        "step_s": step,
        "tokens_per_s": batch * seq / step,
        "peak_rss_mb": peak / 1024,
        "train_mem_mb": (peak - rss_built) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, smaller batch")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results-lora.md"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch, seq, warmup, steps = (4, 128, 2, 4) if args.quick else (8, 256, 3, 10)
    if args.child:
        print(json.dumps(child(args.child, batch, seq, warmup, steps)))
        return
    rows = []
    for name in CONFIGS:
        cmd = [sys.executable, __file__, "--child", name] + (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{name:>10}: {rows[-1]['step_s'] * 1000:8.1f} ms/step", flush=True)
    by = {r["config"]: r for r in rows}
    import torch

    lines = [
        "# LoRA benchmark",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}, CPU fp32. Model: GPT-2 style, {SHAPE['layers']} "
        f"layers, {SHAPE['emb']} dims, {SHAPE['heads']} heads, vocab {SHAPE['vocab']}. Batch "
        f"{batch} x {seq} tokens, median of {steps} steps after {warmup} warm-up.",
        "",
        "| config | trainable / total params | step (ms) | tokens/s | peak RSS (MB) | "
        "training memory (MB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['trainable']:,} / {r['total']:,} | {r['step_s'] * 1000:.1f} | "
            f"{r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['train_mem_mb']:.0f} |"
        )
    lines += [
        "",
        f"- LoRA step vs full step (ours): {by['ours-lora']['step_s'] / by['ours-full']['step_s']:.2f}x "
        "the time.",
        f"- Our LoRA throughput vs transformers + PEFT LoRA: "
        f"{by['ours-lora']['tokens_per_s'] / by['hf-lora']['tokens_per_s']:.2f}x.",
        "- Training memory is peak RSS minus RSS after the model was built (gradients, optimizer "
        "state, activations).",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
