"""Any local Hugging Face causal-LM or sequence-classification model (Llama, OLMo, Qwen,
GPT-NeoX, ...) behind the interface of our GPT: logits from input_ids.

Only `model=hf` (and restoring such a model) imports this module; our GPT code never does.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from pipeline.errors import UserError
from pipeline.files import move_files_into
from pipeline.model.heads import classifier_fields
from pipeline.model.sampling import Generates


class HFModel(Generates, nn.Module):
    """Implements pipeline.model.contract.Model around a transformers model (`hf`)."""

    arch = "hf"
    peft_prefix = "hf."

    def __init__(self, model: nn.Module, n_outputs: int | None):
        super().__init__()
        self.hf = model
        self.n_outputs = n_outputs
        config = model.config
        self.context_length = int(
            getattr(config, "max_position_embeddings", None)
            or getattr(config, "n_positions", None)
            or 2048
        )

    @property
    def is_lm(self) -> bool:
        return self.n_outputs is None

    @property
    def peft_task(self) -> str:
        return "CAUSAL_LM" if self.is_lm else "SEQ_CLS"

    @property
    def peft_root(self) -> nn.Module:
        return self.hf

    def with_peft_root(self, root: nn.Module) -> HFModel:
        self.hf = root
        return self

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
        """Greedy decoding through transformers' generate, which keeps the attention cache
        (many times faster on a long answer); sampling as our GPT samples."""
        if temperature != 0:
            return super().generate(
                input_ids, max_new_tokens, temperature, top_k, eos_id, generator
            )
        return self.hf.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_id,
            pad_token_id=self.hf.config.pad_token_id if eos_id is None else eos_id,
        )

    def pooled(self, logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # transformers' classifiers pool inside, at the last token that is not padding.
        return logits

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, n_outputs: int | None, pad_id: int, labels: list[str]
    ) -> HFModel:
        """A causal LM, or a classifier whose new head has `n_outputs` logits (the pretrained
        LM head is dropped). `directory` may also be a GGUF file, which transformers reads and
        dequantizes itself."""
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        source = {"pretrained_model_name_or_path": directory}
        if Path(directory).suffix == ".gguf":
            source = {"pretrained_model_name_or_path": Path(directory).parent}
            source["gguf_file"] = Path(directory).name
        try:
            config = AutoConfig.from_pretrained(**source)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(
                f"{directory} is not a Hugging Face model directory transformers can read "
                f"({str(exc).splitlines()[0]})."
            ) from None
        config.pad_token_id = pad_id
        if n_outputs is None:
            model = AutoModelForCausalLM.from_pretrained(
                **source, config=config, dtype=torch.float32
            )
        else:
            for key, value in classifier_fields(n_outputs, labels).items():
                setattr(config, key, value)
            model = AutoModelForSequenceClassification.from_pretrained(
                **source, config=config, dtype=torch.float32, ignore_mismatched_sizes=True
            )
        if "gguf_file" in source:
            _dequantized(model)
        return cls(model, n_outputs)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> HFModel:
        """The architecture recorded in a checkpoint, with fresh weights (loaded after)."""
        config_dict = dict(meta["hf_config"])
        config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
        auto = (
            AutoModelForCausalLM
            if meta["n_outputs"] is None
            else AutoModelForSequenceClassification
        )
        return cls(auto.from_config(config, dtype=torch.float32), meta["n_outputs"])

    def metadata(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "hf_config": self.hf.config.to_dict(),
            "n_outputs": self.n_outputs,
        }

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Causal LM: (batch, tokens, vocab). Classifier: (batch, n_outputs), pooled by
        transformers at the last token that is not padding. `position_ids` that restart at 0
        mark packed examples: transformers then confines attention to each (without an
        attention_mask), as our GPT does."""
        return self.hf(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).logits

    def save(self, directory: Path, tokenizer, max_shard_bytes: int) -> None:
        """save_pretrained into a temporary folder, then each file renamed into place."""
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".hf-export-") as tmp:
            self.hf.save_pretrained(tmp, max_shard_size=max_shard_bytes, safe_serialization=True)
            for stale in directory.glob("model*.safetensors*"):
                stale.unlink()
            move_files_into(tmp, directory)
        if tokenizer is not None:
            tokenizer.save(directory)


def _dequantized(model: nn.Module) -> None:
    """transformers reads a GGUF file into float32 weights but still marks the model as
    GGUF-quantized; it is a plain float model now (to train, checkpoint and save as such)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
        model.config._is_quantized = False
