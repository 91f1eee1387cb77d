"""Attention sparsity, measured: per layer and head, the share of attention probabilities below
an eps and the attention entropy. The fused kernels never materialise the probabilities, so a
few validation batches are run again with an explicit softmax."""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import nn

from pipeline.model.gpt import MultiHeadAttention


def examples(batch: dict) -> list[torch.Tensor]:
    """Each example's token ids, without padding; a packed row gives each of its examples."""
    found = []
    positions = batch.get("position_ids")
    for row, n in enumerate(batch["lengths"].tolist()):
        ids = batch["input_ids"][row, :n]
        if positions is None:
            found.append(ids)
            continue
        starts = (positions[row, :n] == 0).nonzero().flatten().tolist()
        found += [ids[a:b] for a, b in zip(starts, [*starts[1:], n], strict=True)]
    return found


@torch.no_grad()
def attention_probabilities(model: nn.Module, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, (batch, heads, tokens, tokens) attention probabilities for these inputs."""
    root = model.peft_root
    if model.arch == "gpt":
        return _gpt_probabilities(model, root, input_ids)
    # transformers returns the probabilities only from its eager (unfused) attention.
    previous = root.config._attn_implementation
    root.set_attn_implementation("eager")
    try:
        out = root(input_ids=input_ids, output_attentions=True, use_cache=False)
    finally:
        root.set_attn_implementation(previous)
    return list(out.attentions)


def _gpt_probabilities(model, root, input_ids) -> list[torch.Tensor]:
    layers = [m for m in root.modules() if isinstance(m, MultiHeadAttention)]
    found: list[torch.Tensor] = []

    def explicit(module: MultiHeadAttention, args) -> None:
        q, k, _ = module.heads(args[0])
        allowed = module.pattern.mask(torch.arange(q.shape[-2], device=q.device))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        found.append(torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1))

    handles = [m.register_forward_pre_hook(explicit) for m in layers]
    try:
        model(input_ids)
    finally:
        for handle in handles:
            handle.remove()
    return found


class AttentionStats:
    """Running sums, per layer and head, over the queries of whole examples: entries below eps
    among the keys each query may attend causally (a sparse pattern's exclusions count as
    zeros), and entropy in nats."""

    def __init__(self, eps: float):
        self.eps = eps
        self.rows = 0
        self.cells = 0
        self.small: dict[int, torch.Tensor] = {}
        self.entropy: dict[int, torch.Tensor] = {}

    def add(self, probabilities: list[torch.Tensor]) -> None:
        """Probabilities of one example: per layer, (1, heads, tokens, tokens)."""
        b, _, t, _ = probabilities[0].shape
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        self.rows += b * t
        self.cells += b * int(causal.sum())
        for layer, p in enumerate(probabilities):
            p = p.float().cpu()
            small = ((p < self.eps) & causal).sum(dim=(0, 2, 3))
            entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(dim=(0, 2, 3))
            self.small[layer] = self.small.get(layer, 0) + small.double()
            self.entropy[layer] = self.entropy.get(layer, 0) + entropy.double()

    def table(self) -> dict[tuple[int, int], tuple[float, float]]:
        """{(layer, head): (share below eps, mean entropy per query)}."""
        return {
            (layer, head): (
                float(self.small[layer][head]) / self.cells,
                float(self.entropy[layer][head]) / self.rows,
            )
            for layer in sorted(self.small)
            for head in range(len(self.small[layer]))
        }

    def metrics(self) -> dict[str, float]:
        """attention_sparsity/layer<L>.head<H>/below_eps and /entropy, and per-layer means."""
        result: dict[str, float] = {}
        by_layer: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for (layer, head), (share, entropy) in self.table().items():
            result[f"layer{layer}.head{head}/below_eps"] = share
            result[f"layer{layer}.head{head}/entropy"] = entropy
            by_layer[layer].append((share, entropy))
        for layer, values in by_layer.items():
            result[f"layer{layer}/below_eps"] = sum(v[0] for v in values) / len(values)
            result[f"layer{layer}/entropy"] = sum(v[1] for v in values) / len(values)
        return result

    def markdown(self) -> str:
        lines = [
            f"| layer | head | probabilities < {self.eps:g} | entropy (nats) |",
            "| ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {layer} | {head} | {share:.2%} | {entropy:.3f} |"
            for (layer, head), (share, entropy) in self.table().items()
        ]
        return "\n".join(lines) + "\n"
