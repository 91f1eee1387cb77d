"""Which entries a mask keeps, computed from scores: exact counts, ties broken by position.

Every function takes scores (higher = more important; -inf for an entry already pruned, so
that pruning only grows) and returns boolean keep-masks of the same shapes.
"""

from __future__ import annotations

import math

import torch


def keep_highest(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """A mask that drops exactly the n_prune lowest-scoring entries."""
    flat = scores.reshape(-1)
    keep = torch.ones_like(flat, dtype=torch.bool)
    if n_prune > 0:
        keep[torch.topk(flat, n_prune, largest=False, sorted=False).indices] = False
    return keep.view_as(scores)


def keep_in_groups(scores: torch.Tensor, group: int, n_prune: int) -> torch.Tensor:
    """Drop the n_prune lowest entries of every run of `group` consecutive entries along the
    last dimension (N:M sparsity: group M, prune M - N; one output row: group in_features)."""
    if scores.shape[-1] % group:
        raise ValueError(f"last dimension {scores.shape[-1]} is not a multiple of {group}")
    groups = scores.reshape(-1, group)
    keep = torch.ones_like(groups, dtype=torch.bool)
    if n_prune > 0:
        lowest = torch.topk(groups, n_prune, dim=1, largest=False, sorted=False).indices
        keep.scatter_(1, lowest, False)
    return keep.view_as(scores)


def select(
    scores: dict[str, torch.Tensor],
    sparsity: float,
    scope: str = "layer",
    max_layer_sparsity: float | None = None,
) -> dict[str, torch.Tensor]:
    """Keep-masks with floor(sparsity * numel) entries dropped in every tensor (scope=layer), or
    floor(sparsity * total) dropped over all of them by one ranking (scope=global), no tensor
    above max_layer_sparsity."""
    if scope == "layer":
        return {n: keep_highest(s, math.floor(sparsity * s.numel())) for n, s in scores.items()}
    caps = {
        n: math.floor((max_layer_sparsity if max_layer_sparsity is not None else 1.0) * s.numel())
        for n, s in scores.items()
    }
    to_prune = math.floor(sparsity * sum(s.numel() for s in scores.values()))
    masks: dict[str, torch.Tensor] = {}
    # Water-filling: a tensor the global ranking would push past its cap is pruned to the cap,
    # and the rest of the count is ranked again over the others.
    while True:
        free = [n for n in scores if n not in masks]
        remaining = to_prune - sum(caps[n] for n in masks)
        flat = torch.cat([scores[n].reshape(-1).float() for n in free])
        keep = keep_highest(flat, remaining)
        split = dict(zip(free, keep.split([scores[n].numel() for n in free]), strict=True))
        over = [n for n in free if int((~split[n]).sum()) > caps[n]]
        if not over:
            masks.update({n: split[n].view_as(scores[n]) for n in free})
            return {n: masks[n] for n in scores}
        for n in over:
            masks[n] = keep_highest(scores[n], caps[n])


def drop_and_grow(
    weight: torch.Tensor, keep: torch.Tensor, grad: torch.Tensor, fraction: float
) -> torch.Tensor:
    """RigL: drop the fraction of kept weights smallest in magnitude, and grow as many of the
    others where the dense gradient is largest; the number kept does not change."""
    n_kept = int(keep.sum())
    n_swap = math.floor(fraction * n_kept)
    if n_swap == 0:
        return keep
    magnitude = torch.where(keep, weight.abs().float(), torch.inf)
    dropped = ~keep_highest(magnitude, n_swap)
    after_drop = keep & ~dropped
    # Dropped weights may grow back, as in the RigL paper; kept ones are not candidates.
    growth = torch.where(after_drop, -torch.inf, grad.abs().float())
    grown = keep_highest(growth, growth.numel() - n_swap)
    return after_drop | grown
