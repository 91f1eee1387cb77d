"""Sampling text from any model that maps input_ids to next-token logits."""

from __future__ import annotations

import torch


class Generates:
    """Mixin for an nn.Module whose forward(input_ids) gives logits (batch, tokens, vocab) and
    that has a `context_length`."""

    context_length: int

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample continuations; temperature 0 is greedy decoding."""
        for _ in range(max_new_tokens):
            logits = self(input_ids[:, -self.context_length :])[:, -1, :]  # type: ignore[operator]
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = torch.softmax(logits.float(), dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)
            input_ids = torch.cat([input_ids, next_id], dim=1)
            if eos_id is not None and bool((next_id == eos_id).all()):
                break
        return input_ids
