"""Checkpoint I/O (issue figure 5): save and load of a GPT-2-small-shaped (124M) state dict,
safetensors versus torch.save / torch.load(weights_only=True), in MB/s.

The file just written is in the page cache, so a load measures deserialisation and copying,
not the disk; saves are not fsynced. Each load materialises every tensor (a sum over them), so
a lazy or memory-mapped load cannot look free.
"""

from __future__ import annotations

import time

import torch
from safetensors.torch import load_file, save_file

from benchmarks.common import Context, Figure, gpt_shape, interleave, ratios
from pipeline.model.gpt import GPTModel

TITLE = "Checkpoint I/O"
SIZES = {
    "smoke": ("gpt-tiny", 256, 2),
    "quick": ("gpt2-small", 50257, 2),
    "full": ("gpt2-small", 50257, 3),
}


def run(ctx: Context) -> list[Figure]:
    preset, vocab, rounds = ctx.pick(SIZES)
    model = GPTModel(gpt_shape(preset, vocab))
    # The tied output head is the token embedding: stored once, as the pipeline does.
    state = {k: v for k, v in model.state_dict().items() if k != "out_head.weight"}
    megabytes = sum(v.numel() * v.element_size() for v in state.values()) / 1e6
    files = {"safetensors": ctx.workdir / "model.safetensors", "torch": ctx.workdir / "model.pth"}

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return megabytes / (time.perf_counter() - start)

    def touch(loaded: dict[str, torch.Tensor]) -> None:
        for tensor in loaded.values():
            tensor.sum()

    cases = {
        "save safetensors": lambda: timed(lambda: save_file(state, files["safetensors"])),
        "save torch.save": lambda: timed(lambda: torch.save(state, files["torch"])),
        "load safetensors": lambda: timed(lambda: touch(load_file(files["safetensors"]))),
        "load torch.load": lambda: timed(
            lambda: touch(torch.load(files["torch"], weights_only=True, map_location="cpu"))
        ),
    }
    s = interleave(cases, rounds)
    params = sum(v.numel() for v in state.values())
    figures = [
        Figure(f"{case} ({params / 1e6:.0f}M params, {megabytes:.0f} MB)", "MB/s", s[case])
        for case in cases
    ]
    figures += [
        Figure(
            "save: safetensors / torch",
            "ratio",
            ratios(s["save safetensors"], s["save torch.save"]),
        ),
        Figure(
            "load: safetensors / torch",
            "ratio",
            ratios(s["load safetensors"], s["load torch.load"]),
        ),
    ]
    return figures
