"""Conversations as training examples (data.task=instruct): the chat template checked against
the tokenizer, the conversations as text (what a tokenizer trained for them learns from), and
what is said about those cut or left out. The tokenizing is pipeline/data/encode.py's."""

from __future__ import annotations

import numpy as np

from pipeline.config.data import DataConfig
from pipeline.data.chat import TEMPLATES, Template, render_chat
from pipeline.data.instruct import Conversation
from pipeline.data.tokenizer import EOS, TextTokenizer
from pipeline.errors import UserError


def template_of(cfg: DataConfig, tokenizer: TextTokenizer | None) -> Template:
    """data.template, checked against the tokenizer: `tokenizer` needs a chat template, the
    others need their special tokens in a pretrained tokenizer's vocabulary."""
    if cfg.template == "tokenizer":
        template = tokenizer.chat_template if tokenizer else None
        if not template:
            raise UserError(
                "data.template=tokenizer uses the pretrained model's own chat template, and this "
                "tokenizer has none (tokenizer_config.json or the GGUF metadata). Choose "
                "data.template=chatml, llama3 or alpaca."
            )
        return Template("tokenizer", template, tokenizer.eos)
    template = TEMPLATES[cfg.template]
    if tokenizer is not None:
        vocab = tokenizer.tokenizer.get_vocab()
        missing = [t for t in (*template.special_tokens, template.end_of_turn) if t not in vocab]
        if missing:
            raise UserError(
                f"data.template={cfg.template} writes {', '.join(missing)}, which this "
                "tokenizer does not have (adding tokens would change the pretrained model's "
                "vocabulary). Use data.template=tokenizer (the model's own chat template) or "
                "alpaca."
            )
    return template


def rendered(conversations: list[Conversation], template: Template) -> list[str]:
    """The conversations as text (what a tokenizer trained for them learns from)."""
    return [render_chat(template.jinja, c, False, eos_token=EOS) for c in conversations]


def conversation_notes(cfg: DataConfig, total: int, dropped: int, lengths: np.ndarray) -> list[str]:
    """Warnings about conversations cut to data.max_length, or left out because their prompt
    alone fills it; with data.long_sequences=error, the refusal."""
    cut = int((lengths > cfg.max_length).sum())
    limit = f"data.max_length={cfg.max_length} tokens"
    empty = (
        f"{dropped} of {total} conversations have a prompt that alone fills {limit}, so they "
        "would train on nothing"
    )
    long = f"{cut} of {total} conversations are longer than {limit}"
    if (dropped or cut) and cfg.long_sequences == "error":
        raise UserError(
            f"{empty if dropped else long}. Raise data.max_length, shorten them, or set "
            "data.long_sequences=truncate."
        )
    notes = [f"{empty}; they are left out."] if dropped else []
    if cut:
        notes.append(f"{long}; they are truncated. data.long_sequences=error refuses them.")
    return notes


def chat_tokenizer(cfg: DataConfig, tokenizer: TextTokenizer) -> TextTokenizer:
    """The tokenizer with the chat template it is trained with (saved with the model)."""
    template = template_of(cfg, tokenizer)
    return tokenizer.with_chat_template(template.jinja, template.end_of_turn)
