"""Which keys each query may attend to (model.attention.pattern), and the kernels that compute
causal attention under that pattern without materialising what it excludes.

One rule, `Attention.allows(query position, key position)`, defines every pattern; each kernel
derives its mask from it, so they cannot disagree:
- `masked`: PyTorch's SDPA with the full boolean mask (the reference; packed rows and ONNX);
- `blocked`: queries in chunks of the window, each attending to its own chunk and the one before
  (plus the global tokens), through SDPA with a small mask: exact for sliding_window and
  local_global, and O(tokens x window) in time and memory (CPU training, and CUDA with dropout);
- `flex`: FlexAttention's block mask, compiled, on CUDA (it has no backward on CPU).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Attention:
    pattern: str = "dense"
    # sliding_window, local_global: how many tokens back a query sees, itself included.
    # strided: the local span and the stride of the Sparse Transformer's second head group.
    window: int = 256
    # local_global: the first tokens every query sees (attention sinks).
    global_tokens: int = 0

    def allows(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """True where a query at position `query` may attend to a key at `key` (broadcast)."""
        distance = query - key
        causal = distance >= 0
        if self.pattern == "dense":
            return causal
        near = distance < self.window
        if self.pattern == "sliding_window":
            return causal & near
        if self.pattern == "local_global":
            return causal & (near | (key < self.global_tokens))
        return causal & (near | (distance % self.window == 0))

    def is_dense_for(self, tokens: int) -> bool:
        """Whether, over `tokens` positions, the pattern allows every causal pair."""
        if self.pattern == "local_global" and self.global_tokens >= tokens:
            return True
        return self.pattern == "dense" or self.window >= tokens

    def mask(self, positions: torch.Tensor) -> torch.Tensor:
        """(..., tokens, tokens) boolean mask from positions (..., tokens). In a packed row,
        positions restart at 0 for each example, which attends only within itself."""
        segment = (positions == 0).cumsum(-1)
        same = segment.unsqueeze(-1) == segment.unsqueeze(-2)
        return same & self.allows(positions.unsqueeze(-1), positions.unsqueeze(-2))


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention: Attention,
    positions: torch.Tensor | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """softmax(QK^T/sqrt(d))V over the pairs the pattern allows, for (batch, heads, tokens, head_dim) tensors.
    `positions` (batch, tokens) marks packed rows; None: positions 0..tokens-1."""
    t = q.shape[-2]
    if positions is not None:
        mask = attention.mask(positions).unsqueeze(1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    # An exported graph serves any length, so it keeps the mask even where it is all causal.
    if attention.pattern != "dense" and _exporting():
        return masked(q, k, v, attention, dropout)
    if attention.is_dense_for(t):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
    if q.is_cuda and dropout == 0.0:
        return flex(q, k, v, attention, compiled=True)
    if attention.pattern in ("sliding_window", "local_global"):
        return blocked(q, k, v, attention, dropout)
    return masked(q, k, v, attention, dropout)


def masked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention: Attention, dropout: float = 0.0
) -> torch.Tensor:
    """The reference: SDPA with the whole (tokens, tokens) mask."""
    mask = attention.mask(torch.arange(q.shape[-2], device=q.device))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


def blocked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention: Attention, dropout: float = 0.0
) -> torch.Tensor:
    """sliding_window / local_global in chunks of `window` queries. A query at i sees keys
    (i - window, i], all within its chunk and the one before, so each chunk attends to 2 *
    window keys (plus the global ones) instead of all earlier tokens."""
    b, h, t, d = q.shape
    w, g = attention.window, attention.global_tokens if attention.pattern == "local_global" else 0
    n = math.ceil(t / w)
    g = min(g, n * w)

    # Chunks become batch entries, (batch * chunks, heads, window, head_dim): SDPA's fused CPU
    # kernel takes 4-d inputs, and one (chunks, 1, window, keys) mask serves every head.
    def chunks(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, n * w - t)).view(b, h, n, w, d).transpose(1, 2)

    def with_previous(x: torch.Tensor) -> torch.Tensor:
        previous = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
        parts = [previous, x]
        if g:  # the global tokens, attended from every chunk (and once: masked below)
            parts.insert(
                0,
                x.transpose(1, 2).reshape(b, h, n * w, d)[:, None, :, :g].expand(-1, n, -1, -1, -1),
            )
        return torch.cat(parts, dim=3).reshape(b * n, h, -1, d)

    q, k, v = chunks(q), chunks(k), chunks(v)
    chunk = torch.arange(n, device=q.device).view(n, 1, 1)
    query = chunk * w + torch.arange(w, device=q.device).view(1, w, 1)
    key = (chunk - 1) * w + torch.arange(2 * w, device=q.device).view(1, 1, 2 * w)
    # Keys before 0 (the first chunk's missing predecessor) and global ones are masked here.
    mask = attention.allows(query, key) & (key >= g)
    if g:
        first = torch.arange(g, device=q.device).view(1, 1, g)
        mask = torch.cat([(first <= query).expand(n, w, g), mask], dim=-1)
    out = F.scaled_dot_product_attention(
        q.reshape(b * n, h, w, d),
        with_previous(k),
        with_previous(v),
        attn_mask=mask[:, None].repeat(b, 1, 1, 1),
        dropout_p=dropout,
    )
    return out.view(b, n, h, w, d).transpose(1, 2).reshape(b, h, n * w, d)[:, :, :t]


def flex(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention: Attention, compiled: bool = True
) -> torch.Tensor:
    """FlexAttention with the pattern's block mask (blocks the pattern excludes are skipped).
    Uncompiled it materialises the scores: only for checking the mask on a CPU."""
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = _block_mask(attention, q.shape[-2], str(q.device))
    run = _compiled_flex() if compiled else flex_attention
    return run(q, k, v, block_mask=block_mask)


@functools.lru_cache(maxsize=32)
def _block_mask(attention: Attention, tokens: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(batch, head, query, key):
        return attention.allows(query, key)

    return create_block_mask(mask_mod, None, None, tokens, tokens, device=device)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _exporting() -> bool:
    """Whether torch.export (the ONNX exporter) is tracing."""
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()
