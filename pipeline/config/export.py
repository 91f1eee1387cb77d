"""conf/config.yaml's `export:`: the layouts written at the end of training (and by
python -m pipeline.export)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config.base import SIZE_PATTERN, Group, parse_size
from pipeline.config.locations import WriteFolder

EXPORT_FORMATS = ("hf", "weights", "onnx", "adapter", "merged", "gguf")
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")


class GGUFConfig(Group):
    types: list[Literal[GGUF_TYPES]] = Field(default=["f16"], min_length=1)  # type: ignore[valid-type]
    """One model-<type>.gguf each: f32, f16, bf16, or quantized q8_0 / q4_0 (llama.cpp's
    block formats; matrices whose rows do not split into 32-value blocks stay f16)."""


class ExportConfig(Group):
    formats: list[Literal[EXPORT_FORMATS]] = Field(default=["hf"])  # type: ignore[valid-type]
    """hf (config.json + model.safetensors + tokenizer, for transformers), weights (a plain
    model.pth state_dict), onnx (model.onnx, onnxruntime), gguf (llama.cpp and Ollama, with a
    Modelfile), adapter and merged (LoRA runs)."""
    dir: WriteFolder | None = None
    """Where they are written; null: <run folder>/export."""
    max_shard_size: str = Field(default="5GB", pattern=SIZE_PATTERN)
    """Larger safetensors weights are split into shards with an index, as transformers does."""

    gguf: GGUFConfig = GGUFConfig()

    @property
    def max_shard_bytes(self) -> int:
        return parse_size(self.max_shard_size)
