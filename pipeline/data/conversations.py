"""Conversations to training examples (data.task=instruct): each rendered with the chat
template, cut into prompt and assistant pieces, and tokenized piece by piece, so that the prompt
tokens are exactly those a prompt gets at inference, and the loss covers exactly the assistant's
tokens and their end-of-turn token (data.train_on=responses) or everything (all)."""

from __future__ import annotations

import sys

from pipeline.config.data import DataConfig
from pipeline.data.chat import TEMPLATES, Template, render_chat, segments
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


def tokenize_conversations(
    conversations: list[Conversation], cfg: DataConfig, tokenizer: TextTokenizer
) -> tuple[list[list[int]], list[list[bool]]]:
    """Token ids of each conversation, and which of them the loss covers."""
    template = template_of(cfg, tokenizer)
    special = {"eos_token": template.end_of_turn, "bos_token": tokenizer.config.get("bos_token")}
    ids, trained, dropped, cut = [], [], 0, 0
    for conversation in conversations:
        tokens: list[int] = []
        mask: list[bool] = []
        for text, answer in segments(template.jinja, conversation, template.end_of_turn, **special):
            piece = tokenizer.encode(text)
            tokens += piece
            mask += [answer or cfg.train_on == "all"] * len(piece)
        if len(tokens) > cfg.max_length:
            cut += 1
            tokens, mask = tokens[: cfg.max_length], mask[: cfg.max_length]
        if not any(mask[1:]):
            dropped += 1  # the prompt alone fills max_length: nothing would be learned
            continue
        ids.append(tokens)
        trained.append(mask)
    _report(cfg, len(conversations), dropped, cut)
    return ids, trained


def _report(cfg: DataConfig, total: int, dropped: int, cut: int) -> None:
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
    if dropped:
        print(f"warning: {empty}; they are left out.", file=sys.stderr)
    if cut:
        print(
            f"warning: {long}; they are truncated. data.long_sequences=error refuses them.",
            file=sys.stderr,
        )
