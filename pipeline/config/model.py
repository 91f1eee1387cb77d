"""conf/model/: the architecture and its shape, or pretrained weights to start from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config.base import Group, LocalPath, fail
from pipeline.config.locations import check_file_or_folder, checked
from pipeline.errors import UserError


class AttentionConfig(Group):
    """Which earlier tokens each token attends to (our GPT; see docs/sparsity.md)."""

    pattern: Literal["dense", "sliding_window", "local_global", "strided"] = "dense"
    """dense: every earlier token. sliding_window: the last `window` tokens. local_global: the
    window plus the first `global_tokens` tokens (attention sinks). strided: the Sparse
    Transformer's pattern, the window plus every window-th earlier token."""
    window: int = Field(default=256, gt=0)
    """Tokens a query sees back from itself, itself included (and the stride of strided)."""
    global_tokens: int = Field(default=0, ge=0)
    """local_global: the first tokens of every sequence that every token sees."""

    def check(self, arch: str) -> None:
        if self.pattern != "dense" and arch != "gpt":
            raise fail(
                "model.attention.pattern",
                self.pattern,
                "dense with model.arch=hf: a Hugging Face model attends as its own config says "
                "(e.g. sliding_window in a Mistral config.json)",
            )
        if self.global_tokens and self.pattern != "local_global":
            raise fail(
                "model.attention.global_tokens",
                self.global_tokens,
                "0 unless model.attention.pattern=local_global (the only pattern that uses it)",
            )
        if self.pattern == "local_global" and not self.global_tokens:
            raise fail(
                "model.attention.global_tokens",
                0,
                "at least 1 with model.attention.pattern=local_global (or use sliding_window)",
            )


# Export layouts whose readers run dense causal attention: a sparse pattern would load there as a
# different model.
DENSE_ONLY_FORMATS = ("hf", "merged", "adapter", "gguf")


def check_exportable(pattern: str, formats: list[str] | tuple[str, ...]) -> None:
    dense_only = [f for f in formats if f in DENSE_ONLY_FORMATS]
    if pattern != "dense" and dense_only:
        raise UserError(
            f"export.formats includes {', '.join(dense_only)}, but this model attends with "
            f"model.attention.pattern={pattern}, which transformers' GPT-2 and llama.cpp cannot "
            "express: they would load it as a different, dense model. Export it as weights "
            "and/or onnx (export.formats=[weights,onnx]), which keep the pattern."
        )


class ModelConfig(Group):
    name: str
    """The preset's name (gpt-tiny, gpt-mini, gpt2-small ... gpt2-xl, hf)."""
    arch: Literal["gpt", "hf"] = "gpt"
    """gpt: the GPT of the teaching texts (the shape fields below). hf: any Hugging Face
    causal-LM / sequence-classification directory given by init_from (shape fields unused)."""
    vocab_size: int | None = Field(default=None, gt=0)
    """null: the size of the tokenizer's vocabulary."""
    context_length: int = Field(default=1024, gt=0)
    """Positions the model can attend over (GPT_CONFIG's context_length)."""
    emb_dim: int = Field(default=768, gt=0)
    """Width of the embeddings and of every block."""
    n_heads: int = Field(default=12, gt=0)
    """Attention heads; must divide emb_dim."""
    n_layers: int = Field(default=12, gt=0)
    """Transformer blocks."""
    drop_rate: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout on embeddings, attention and the residual branches."""
    qkv_bias: bool = False
    """Biases on the query, key and value projections (GPT-2 has them)."""
    tie_weights: bool = True
    """A language model's output head shares the token embedding matrix."""
    layer_norm_eps: float = Field(default=1e-5, gt=0.0)
    """LayerNorm's epsilon."""
    init_from: LocalPath | None = None
    """Pretrained weights: a run folder, a .ckpt, a Hugging Face directory or a weights file."""
    attention: AttentionConfig = AttentionConfig()

    def check(self) -> None:
        self.attention.check(self.arch)
        if self.arch == "hf" and not self.init_from:
            raise fail(
                "model.init_from",
                None,
                "a Hugging Face model directory (config.json + weights) when model=hf",
            )
        if self.init_from:
            checked("model.init_from", self.init_from, check_file_or_folder)
        if self.arch == "gpt" and self.emb_dim % self.n_heads:
            divisors = [h for h in range(1, min(self.emb_dim, 64) + 1) if self.emb_dim % h == 0]
            raise fail(
                "model.n_heads",
                self.n_heads,
                f"model.emb_dim ({self.emb_dim}) must be divisible by model.n_heads; "
                f"head counts that divide it: {divisors}",
            )


def check_context(max_length: int, context_length: int, pretrained: bool) -> None:
    """The one rule between data and model: an example fits the model's context. A preset's
    context is known when the config is validated; a pretrained model's once it is read."""
    if max_length <= context_length:
        return
    if not pretrained:
        raise fail(
            "data.max_length", max_length, f"at most model.context_length ({context_length})"
        )
    raise UserError(
        f"data.max_length={max_length} is longer than the model's context "
        f"({context_length} tokens). Lower data.max_length."
    )
