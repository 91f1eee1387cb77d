"""The GPT of the teaching texts: token + position embeddings, pre-LayerNorm transformer blocks
of causal multi-head attention and a GELU feed-forward, a final LayerNorm and an output head.

Module names follow the texts (`tok_emb`, `trf_blocks`, `att.W_query`, `ff`, `out_head`), and
`GPTConfig` carries the fields of their `GPT_CONFIG` / `NEW_CONFIG` dictionaries.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from pipeline.model.attention import Attention, attend
from pipeline.model.heads import pool_last_token
from pipeline.model.sampling import Generates


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    context_length: int
    emb_dim: int
    n_heads: int
    n_layers: int
    drop_rate: float = 0.0
    qkv_bias: bool = False
    tie_weights: bool = True
    layer_norm_eps: float = 1e-5
    # None: a language model (the head predicts the vocabulary). Otherwise a classifier with
    # this many outputs (1 for binary logistic regression).
    n_outputs: int | None = None
    # Which keys each query attends to (model.attention); checkpoints store it as a dict.
    attention: Attention = field(default_factory=Attention)

    def __post_init__(self):
        if isinstance(self.attention, dict):
            object.__setattr__(self, "attention", Attention(**self.attention))

    @property
    def head_size(self) -> int:
        return self.vocab_size if self.n_outputs is None else self.n_outputs

    @property
    def is_lm(self) -> bool:
        return self.n_outputs is None

    def to_dict(self) -> dict:
        return asdict(self)


class MultiHeadAttention(nn.Module):
    """Causal self-attention under the model's attention pattern (pipeline/model/attention.py);
    softmax(QK^T/sqrt(d))V runs in PyTorch's fused kernels."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.emb_dim
        self.n_heads = cfg.n_heads
        self.W_query = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.W_key = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.W_value = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(d, d)
        self.dropout = cfg.drop_rate
        self.pattern = cfg.attention

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values: (batch, heads, tokens, head_dim) each."""
        b, t, d = x.shape
        return tuple(
            proj(x).view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)
            for proj in (self.W_query, self.W_key, self.W_value)
        )

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """`positions`: (batch, tokens) of a packed row, restarting at 0 for each example, which
        attends only within itself; None: positions 0..tokens-1."""
        b, t, d = x.shape
        dropout = self.dropout if self.training else 0.0
        context = attend(*self.heads(x), self.pattern, positions, dropout)
        return self.out_proj(context.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim)
        # GPT-2's tanh approximation, so that its checkpoints reproduce their logits.
        self.gelu = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(4 * cfg.emb_dim, cfg.emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.emb_dim, eps=cfg.layer_norm_eps)
        self.att = MultiHeadAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.emb_dim, eps=cfg.layer_norm_eps)
        self.ff = FeedForward(cfg)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), positions))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class GPTModel(Generates, nn.Module):
    """Implements pipeline.model.contract.Model."""

    arch = "gpt"
    peft_prefix = ""
    peft_task = None

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.context_length = cfg.context_length
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.emb_dim, eps=cfg.layer_norm_eps)
        # No bias: GPT-2's lm_head and Hugging Face's sequence-classification `score` have none,
        # so both heads export one-to-one (the final LayerNorm's shift plays the bias' role).
        self.out_head = nn.Linear(cfg.emb_dim, cfg.head_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections that write into the residual stream.
        for name, param in self.named_parameters():
            if name.endswith(("att.out_proj.weight", "ff.fc2.weight")):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))
        if cfg.tie_weights and cfg.is_lm:
            self.out_head.weight = self.tok_emb.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def is_lm(self) -> bool:
        return self.cfg.is_lm

    @property
    def n_outputs(self) -> int | None:
        return self.cfg.n_outputs

    @property
    def peft_root(self) -> nn.Module:
        return self

    def with_peft_root(self, root: nn.Module) -> nn.Module:
        # PEFT wraps our GPT itself: the wrapper (or, unloaded, the plain GPT) is the model.
        return root

    def pooled(self, logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return pool_last_token(logits, lengths)

    def metadata(self) -> dict:
        """What rebuilds this model (stored in checkpoints)."""
        return {"arch": self.arch, "gpt_config": self.cfg.to_dict()}

    @property
    def tied(self) -> bool:
        return self.out_head.weight is self.tok_emb.weight

    def hidden_states(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = input_ids.shape[1]
        if t > self.cfg.context_length:
            raise ValueError(
                f"sequence of {t} tokens is longer than the context length "
                f"{self.cfg.context_length}"
            )
        packed = position_ids
        if position_ids is None:
            position_ids = torch.arange(t, device=input_ids.device)
        x = self.drop_emb(self.tok_emb(input_ids) + self.pos_emb(position_ids))
        for block in self.trf_blocks:
            x = block(x, packed)
        return self.final_norm(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits for every position: (batch, tokens, head_size). Padding is on the right and
        attention is causal, so real tokens never see it: `attention_mask` is not needed.
        `position_ids` that restart at 0 mark packed examples, which attend only within
        themselves."""
        return self.out_head(self.hidden_states(input_ids, position_ids))

    def num_parameters(self, trainable_only: bool = False) -> int:
        # parameters() yields a tied tensor once, so the count is not doubled.
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
