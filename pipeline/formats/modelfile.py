"""The Ollama Modelfile beside a GGUF export: `ollama create <name> -f Modelfile`.

Without an explicit TEMPLATE, Ollama guesses one from the file's chat template or falls back to
the bare prompt, and without `PARAMETER stop` for the end-of-turn token a fine-tuned model
never stops: the most reported problem with fine-tuned models in Ollama. So both are written,
in Ollama's Go template syntax, for the chat format the model was trained with (ChatML,
Llama 3, Alpaca), or the plain prompt for a model trained on plain text.
"""

from __future__ import annotations

from pipeline.data.chat import default_system_prompt
from pipeline.data.tokenizer import TextTokenizer

# Go templates of Ollama's own library models for these formats.
_TEMPLATES = {
    "chatml": (
        "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        '{{- range .Messages }}{{- if ne .Role "system" }}<|im_start|>{{ .Role }}\n'
        "{{ .Content }}<|im_end|>\n{{ end }}{{- end }}<|im_start|>assistant\n"
    ),
    "alpaca": (
        "{{- if .System }}{{ .System }}\n\n{{ end }}{{- range .Messages }}"
        '{{- if eq .Role "user" }}### Instruction:\n{{ .Content }}\n\n### Response:\n'
        '{{ else if eq .Role "assistant" }}{{ .Content }}<|endoftext|>\n\n{{ end }}{{- end }}'
    ),
    "llama3": (
        "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}"
        '<|eot_id|>{{ end }}{{- range .Messages }}{{- if ne .Role "system" }}'
        "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
}
_END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "alpaca": "<|endoftext|>"}
_MARKERS = {"chatml": "<|im_start|>", "llama3": "<|start_header_id|>"}
_MARKERS["alpaca"] = "### Instruction:"


def chat_format(tokenizer: TextTokenizer) -> str | None:
    """The chat format of the tokenizer's chat template (None: no chat template)."""
    template = tokenizer.chat_template or ""
    return next((name for name, marker in _MARKERS.items() if marker in template), None)


def modelfile(gguf_name: str, tokenizer: TextTokenizer, context_length: int) -> str:
    fmt = chat_format(tokenizer)
    candidates = [_END_OF_TURN[fmt]] if fmt else []
    candidates += [tokenizer.eos, "<|endoftext|>"]
    stops = [t for t in dict.fromkeys(candidates) if _known(tokenizer, t)]
    lines = [f"FROM ./{gguf_name}", ""]
    template = _TEMPLATES[fmt] if fmt else "{{ .Prompt }}"
    lines += [f'TEMPLATE """{template}"""', ""]
    system = default_system_prompt(tokenizer.chat_template) if fmt else None
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines.append(f"PARAMETER num_ctx {context_length}")
    return "\n".join(lines) + "\n"


def _known(tokenizer: TextTokenizer, token: str) -> bool:
    return tokenizer.tokenizer.token_to_id(token) is not None
