"""Chat templates: the Jinja that turns a conversation into the text a model was trained on.

A chat template comes with a model (tokenizer_config.json, a GGUF file's metadata) and is code:
it is rendered only in Jinja2's immutable sandbox, where it cannot reach Python objects,
import or change anything. llama-cpp-python once rendered a template planted in a GGUF file
without a sandbox and ran the attacker's code (CVE-2024-34359).
"""

from __future__ import annotations

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
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **special_tokens
        )
    except SecurityError as exc:
        raise UserError(
            f"The chat template tried to reach outside its sandbox ({exc}) and was stopped. "
            "A chat template should only format messages: do not use this model's template."
        ) from None
    except (TemplateError, TypeError, ValueError) as exc:
        raise UserError(f"The chat template could not be rendered ({exc}).") from None


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


def _raise(message: str) -> None:
    raise ValueError(message)
