"""export/hf/ (and export/merged/): config.json, model.safetensors (or shards and their index)
and the tokenizer files, which transformers loads directly."""

from __future__ import annotations

from pathlib import Path

from pipeline.data.tokenizer import TextTokenizer
from pipeline.model.contract import Model
from pipeline.weights.gpt2 import save_hf


def save_hf_layout(
    model: Model,
    directory: Path,
    tokenizer: TextTokenizer | None,
    label_names: list[str],
    max_shard_bytes: int,
) -> None:
    """Our GPT in GPT-2's layout; a Hugging Face model in its own."""
    if model.arch == "gpt":
        save_hf(model, directory, tokenizer, label_names, max_shard_bytes)
    else:
        model.save(directory, tokenizer, max_shard_bytes)
