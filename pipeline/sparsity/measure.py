"""Measuring sparsity that masks do not set: activations and gradients; and the per-layer
weight-sparsity report (table + plot) a run leaves."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
from torch import nn

from pipeline.files import atomic_write, write_text

# Activation modules of our GPT and of transformers' architectures.
_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh)


def activation_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, _ACTIVATIONS) or type(module).__name__.endswith("Activation")
    }


class ActivationCounter:
    """Forward hooks that count, per activation module, exact zeros and entries with
    |x| < eps in its output. They return nothing, so the outputs are unchanged; the counts stay
    on the device until read."""

    def __init__(self, model: nn.Module, eps: float):
        self.eps = eps
        # name -> ([zeros, below eps] as a device tensor, entries seen)
        self.counts: dict[str, tuple[torch.Tensor, int]] = {}
        self.handles = [
            module.register_forward_hook(self._hook(name))
            for name, module in activation_modules(model).items()
        ]

    def _hook(self, name: str):
        def count(module, inputs, output: torch.Tensor) -> None:
            out = output.detach()
            seen = torch.stack([(out == 0).sum(), (out.abs() < self.eps).sum()])
            before, total = self.counts.get(name, (0, 0))
            self.counts[name] = (before + seen, total + out.numel())

        return count

    def fractions(self) -> dict[str, float]:
        """{'<module>/zero': ..., '<module>/below_eps': ...} since the hooks were added."""
        result = {}
        for name, (seen, total) in self.counts.items():
            zeros, small = seen.tolist()
            result[f"{name}/zero"] = zeros / total
            result[f"{name}/below_eps"] = small / total
        return result

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def gradient_sparsity(weights: dict[str, nn.Parameter], threshold: float) -> dict[str, float]:
    """Per layer, the fraction of gradient entries with |g| < threshold."""
    return {
        name.removesuffix(".weight"): float((w.grad.abs() < threshold).float().mean())
        for name, w in weights.items()
        if w.grad is not None
    }


def write_report(
    report: dict[str, float], sizes: dict[str, int], history: list[tuple[int, float]], folder: Path
) -> dict[str, Path]:
    """sparsity.csv / sparsity.md (per layer: parameters, zeros, sparsity) and sparsity.png
    (per layer, and the total over optimizer steps)."""
    rows = [
        (layer, sizes[layer], round(report[layer] * sizes[layer]), report[layer]) for layer in sizes
    ]
    total = sum(sizes.values())
    rows.append(("total", total, round(report["total"] * total), report["total"]))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["layer", "parameters", "zeros", "sparsity"])
    writer.writerows([(a, b, c, f"{d:.6f}") for a, b, c, d in rows])
    lines = ["| layer | parameters | zeros | sparsity |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {a} | {b:,} | {c:,} | {d:.2%} |" for a, b, c, d in rows]
    files = {
        "csv": write_text(folder / "sparsity.csv", buffer.getvalue()),
        "md": write_text(folder / "sparsity.md", "\n".join(lines) + "\n"),
    }
    files["png"] = atomic_write(folder / "sparsity.png", lambda tmp: _plot(report, history, tmp))
    return files


def _plot(report: dict[str, float], history: list[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [k for k in report if k != "total"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, max(3.0, 0.22 * len(layers) + 1)))
    left.barh(range(len(layers)), [report[k] for k in layers])
    left.set_yticks(range(len(layers)), layers, fontsize=6)
    left.invert_yaxis()
    left.set_xlim(0, 1)
    left.set_xlabel("weight sparsity")
    steps, levels = zip(*history, strict=True) if history else ((), ())
    right.step(steps, levels, where="post", marker="o")
    right.set_xlabel("optimizer step")
    right.set_ylabel("total sparsity")
    right.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
