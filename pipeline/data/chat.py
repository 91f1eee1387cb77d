"""Chat templates: the Jinja that turns a conversation into the text a model was trained on.

A chat template comes with a model (tokenizer_config.json, a GGUF file's metadata) and is code:
it is rendered only in Jinja2's immutable sandbox, where it cannot reach Python objects,
import or change anything. llama-cpp-python once rendered a template planted in a GGUF file
without a sandbox and ran the attacker's code (CVE-2024-34359).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UserError


def render_chat(
    template: str,
    messages: list[dict[str, str]],
    add_generation_prompt: bool = True,
    **special_tokens: Any,
) -> str:
    """The conversation as the template writes it; a template that fails, or tries to leave
    the sandbox, is a UserError."""
    from jinja2 import TemplateError
    from jinja2.sandbox import SecurityError

    try:
        return _compiled(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **special_tokens
        )
    except SecurityError as exc:
        raise UserError(
            f"The chat template tried to reach outside its sandbox ({exc}) and was stopped. "
            "A chat template should only format messages: do not use this model's template."
        ) from None
    except (TemplateError, TypeError, ValueError) as exc:
        raise UserError(f"The chat template could not be rendered ({exc}).") from None


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
    """The template compiled once per process: compiling is what rendering costs (Jinja's
    compiler took 138 of 165 s preparing 5,000 conversations when it ran per rendering)."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(template)
    except TemplateError as exc:
        raise UserError(f"The chat template could not be rendered ({exc}).") from None


def chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The conversation so far, then the header of the assistant's turn: what the model
    continues (`tokenizer`: a TextTokenizer with a chat template)."""
    if not tokenizer.chat_template:
        raise UserError("This model has no chat template: pass chat=false and a plain prompt.")
    special = {"eos_token": tokenizer.eos, "bos_token": tokenizer.config.get("bos_token")}
    return render_chat(tokenizer.chat_template, messages, True, **special)


def default_system_prompt(template: str, user_marker: str = "<|user-turn|>") -> str | None:
    """The system prompt a template inserts when a conversation brings none (SmolLM2's
    'You are a helpful AI assistant named SmolLM...'), found by rendering one user turn."""
    text = render_chat(template, [{"role": "user", "content": user_marker}], False)
    before = text.split(user_marker)[0]
    probe = render_chat(
        template,
        [
            {"role": "system", "content": "<|system-turn|>"},
            {"role": "user", "content": user_marker},
        ],
        False,
    )
    if "<|system-turn|>" not in probe:
        return None
    head, _, tail = probe.split(user_marker)[0].partition("<|system-turn|>")
    if not before.startswith(head):
        return None
    prompt = before[len(head) :]
    return prompt[: len(prompt) - len(tail)] if tail and prompt.endswith(tail) else None


@dataclass(frozen=True)
class Template:
    """A chat format: its Jinja, the special tokens it writes, and the token that ends an
    assistant turn (trained, so the model learns to stop; generation stops there)."""

    name: str
    jinja: str
    end_of_turn: str
    special_tokens: tuple[str, ...] = ()


# The teaching texts' format (Alpaca); a user turn may carry an `input`.
_ALPACA = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}"
    "{% if loop.first %}Below is an instruction that describes a task. Write a response that "
    "appropriately completes the request.\n\n{% endif %}"
    "### Instruction:\n{{ m.get('instruction', m['content']) }}\n\n"
    "{% if m.get('input') %}### Input:\n{{ m['input'] }}\n\n{% endif %}"
    "### Response:\n"
    "{% else %}{{ m['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
)
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_LLAMA3 = (
    "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
    "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{% endif %}"
)
TEMPLATES = {
    "alpaca": Template("alpaca", _ALPACA, "<|endoftext|>"),
    "chatml": Template("chatml", _CHATML, "<|im_end|>", ("<|im_start|>", "<|im_end|>")),
    "llama3": Template(
        "llama3",
        _LLAMA3,
        "<|eot_id|>",
        ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
}


class Segmenter:
    """Conversations cut into (text, is trained) pieces that join into the whole rendering:
    each assistant turn's content up to and including its end-of-turn token is trained (the
    content and the token that stops generation, whatever the template); the text between two
    of them is one prompt piece, tokenized as one string as a prompt is at inference.

    Each conversation is rendered once, its assistant contents between two marker characters
    that no text holds, and the pieces are read off that rendering. The reference way renders
    every prefix of the conversation (a turn is what rendering it adds); it is used for the
    first conversations of a run to check the one rendering against it, and for the rest too
    if a template's pieces differ (a template that rewrites the content, say)."""

    CHECKED = 16

    def __init__(self, template: str, end_of_turn: str, **special_tokens: Any):
        self.template, self.end_of_turn, self.special = template, end_of_turn, special_tokens
        self.checked, self.by_prefix = 0, False

    def __call__(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        if self.by_prefix:
            return self._by_prefix(messages)
        pieces = self._once(messages)
        if pieces is not None and self.checked >= self.CHECKED:
            return pieces
        reference = self._by_prefix(messages)
        if pieces is not None:
            self.checked += 1
            self.by_prefix = pieces != reference
        return reference

    def _once(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]] | None:
        """The pieces from one rendering, or None where the markers cannot tell them."""
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        if any(_OPEN in m["content"] or _CLOSE in m["content"] for m in messages):
            return None
        marked = [
            {**m, "content": f"{_OPEN}{m['content']}{_CLOSE}"} if m["role"] == "assistant" else m
            for m in messages
        ]
        text = render_chat(self.template, marked, False, **self.special)
        if text.count(_OPEN) != len(answers) or text.count(_CLOSE) != len(answers):
            return None
        pieces: list[tuple[str, bool]] = []
        cursor = 0
        for answer in answers:
            start = text.find(_OPEN, cursor)
            close = text.find(_CLOSE, start)
            if text[start + 1 : close] != answer or self.end_of_turn in answer:
                return None
            after = text.find(self.end_of_turn, close)
            if after < 0 or _OPEN in text[close:after]:
                return None
            pieces.append((text[cursor:start], False))
            cursor = after + len(self.end_of_turn)
            pieces.append((answer + text[close + 1 : cursor], True))
        pieces.append((text[cursor:], False))
        return _merged(pieces)

    def _by_prefix(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        pieces: list[tuple[str, bool]] = []
        done = ""
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                prompt = render_chat(self.template, messages[:i], True, **self.special)
                pieces.append((prompt[len(done) :], False))
                done = prompt
            full = render_chat(self.template, messages[: i + 1], False, **self.special)
            if not full.startswith(done):
                raise UserError(
                    "The chat template renders a conversation differently depending on what "
                    "follows (it is not a prefix of itself), so the assistant's tokens cannot be "
                    "told apart. Use data.template=chatml, llama3 or alpaca."
                )
            turn = full[len(done) :]
            if message["role"] != "assistant":
                pieces.append((turn, False))
            else:
                end = turn.find(self.end_of_turn)
                end = len(turn) if end < 0 else end + len(self.end_of_turn)
                pieces += [(turn[:end], True), (turn[end:], False)]
            done = full
        return _merged(pieces)


_OPEN, _CLOSE = "\ue000", "\ue001"  # Unicode private-use characters: no data holds them


def _merged(pieces: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Neighbouring pieces of the same kind joined, empty ones dropped."""
    out: list[tuple[str, bool]] = []
    for text, trained in pieces:
        if not text:
            continue
        if out and out[-1][1] == trained:
            out[-1] = (out[-1][0] + text, trained)
        else:
            out.append((text, trained))
    return out


def _raise(message: str) -> None:
    raise ValueError(message)
