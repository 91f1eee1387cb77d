"""Models read back from disk, in any layout weights/detect.py tells apart.

`read` is the one reader. A LoRA checkpoint trained on pretrained weights holds only what
trained and names its base, which `read` reads in turn (the only recursion). `load_trained`
(ckpt=) wants a whole model from it; `load_pretrained` (model.init_from) weights for our GPT.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline import checkpoint
from pipeline.assembly.trained import Trained
from pipeline.data.tokenizer import TextTokenizer, has_tokenizer
from pipeline.errors import UserError
from pipeline.model.gpt import GPTConfig, GPTModel
from pipeline.weights.detect import Layout, detect
from pipeline.weights.gpt2 import gpt_config_from_hf
from pipeline.weights.io import read_hf_dir, read_json, read_state_dict
from pipeline.weights.load import build_from_state, load_into


@dataclass
class Pretrained:
    """Weights for our GPT, and the shape and tokenizer when the source has them."""

    state: dict[str, torch.Tensor]
    shape: GPTConfig | None = None
    tokenizer: TextTokenizer | None = None


def read(path: str | Path) -> Trained | Pretrained:
    """Whatever `path` holds: a whole model, or bare weights (a weights file, or another
    project's Lightning checkpoint)."""
    layout, where = detect(path)
    if layout is Layout.WEIGHTS:
        return Pretrained(read_state_dict(where))
    if layout is Layout.HF:
        return from_hf_directory(where)
    if layout is Layout.GGUF:
        return from_gguf(where)
    ckpt = checkpoint.read(where)
    if not checkpoint.has_metadata(ckpt):
        return Pretrained(ckpt["state_dict"])
    return from_checkpoint(ckpt, where)


def load_trained(path: str | Path) -> Trained:
    """A whole model (ckpt=), in eval mode."""
    layout, where = detect(path)
    if layout is Layout.WEIGHTS:
        raise UserError(
            f"{where} is a bare weights file: it carries no model shape or tokenizer. Use it as "
            "model.init_from=... in training, or pass its folder with a config.json."
        )
    trained = read(where)
    if isinstance(trained, Pretrained):
        raise checkpoint.foreign(where)
    trained.model.eval()
    return trained


def load_pretrained(path: str | Path) -> Pretrained:
    """Weights for our GPT from any layout (model.init_from)."""
    layout, where = detect(path)
    if layout is Layout.HF:
        # Refuse other architectures before loading them (and transformers) at all.
        gpt_config_from_hf(read_json(where / "config.json"), where / "config.json")
    return _gpt_weights(read(where), path)


def _gpt_weights(source: Trained | Pretrained, path: str | Path) -> Pretrained:
    """What `read` found, as weights for our GPT: a LoRA model's merged."""
    if isinstance(source, Pretrained):
        return source
    model = source.model
    if source.lora:
        from pipeline.lora import plain_copy

        model = plain_copy(model, merge=True)  # a LoRA run continues from its merged weights
    if model.arch != "gpt":
        raise UserError(
            f"{path} holds a {model.hf.config.model_type!r} model, not a GPT-2. Train it "
            "with model=hf model.init_from=<its export/hf folder>."
        )
    return Pretrained(model.state_dict(), model.cfg, source.tokenizer)


def from_checkpoint(ckpt: dict, path: Path) -> Trained:
    meta = checkpoint.Metadata.of(ckpt, path)
    state = checkpoint.model_state(ckpt)
    tokenizer = TextTokenizer.from_json(meta.tokenizer) if meta.tokenizer else None
    arch = meta.model.get("arch")
    if meta.base is not None:
        model = _on_base(meta, tokenizer)
    elif arch == "hf":
        from pipeline.model.hf import HFModel

        model = HFModel.from_metadata(meta.model)
    elif meta.lora:
        model = GPTModel(GPTConfig(**meta.model["gpt_config"]))
    else:
        model = build_from_state(GPTConfig(**meta.model["gpt_config"]), state, str(path))
    if meta.lora:
        from pipeline.config.lora import LoraConfig
        from pipeline.lora import apply_lora

        model = apply_lora(model, LoraConfig(**meta.lora))
    if arch == "hf" or meta.lora:
        missing = model.load_state_dict(state, strict=meta.base is None).missing_keys
        trainable = [k for k, p in model.named_parameters() if p.requires_grad and k in missing]
        if trainable:
            raise UserError(f"{path} lacks trained weights: {', '.join(trainable[:4])}.")
    masks = checkpoint.masks(ckpt)
    if masks:
        # LoRA checkpoints on pretrained weights load the dense base file.
        from pipeline.sparsity.targets import apply_masks

        apply_masks(model, masks)
    return Trained(model, tokenizer, meta.label_names, meta.config, meta.lora, meta.base, masks)


def _on_base(meta: checkpoint.Metadata, tokenizer: TextTokenizer | None):
    """The pretrained weights a LoRA checkpoint refers to, with the run's head shape."""
    base = meta.base
    if not Path(base).exists():
        raise UserError(
            f"This LoRA checkpoint holds only the adapters; its base weights were at {base}, "
            "which no longer exists. Restore that path, or export the merged model next time."
        )
    if meta.model.get("arch") == "hf":
        from pipeline.model.hf import HFModel

        n_outputs = meta.model["n_outputs"]
        return HFModel.from_pretrained(base, n_outputs, tokenizer.pad_id, meta.label_names)
    model = GPTModel(GPTConfig(**meta.model["gpt_config"]))
    load_into(model, _gpt_weights(read(base), base).state, base, new_head=not model.is_lm)
    return model


def from_gguf(path: Path) -> Trained:
    """A GGUF file: gpt2 as our GPT, the Llama family through transformers; its tokenizer."""
    from pipeline.weights.gguf import inspect, read_gpt2, read_tokenizer

    info = inspect(path)
    tokenizer = read_tokenizer(path)
    if info.architecture == "gpt2":
        shape, state = read_gpt2(path)
        return Trained(build_from_state(shape, state, str(path)), tokenizer)
    from pipeline.model.hf import HFModel

    return Trained(HFModel.from_pretrained(path, None, tokenizer.pad_id, []), tokenizer)


def from_hf_directory(directory: Path) -> Trained:
    """A GPT-2 directory as our GPT; any other architecture through transformers."""
    config, state = read_hf_dir(directory)
    tokenizer = TextTokenizer.load(directory) if has_tokenizer(directory) else None
    labels = config.get("pipeline_label_names") or []
    if config.get("model_type") == "gpt2":
        shape = gpt_config_from_hf(config, directory / "config.json")
        # A block's attention input, in GPT-2's naming or ours.
        blocks = sum(key.endswith(("attn.c_attn.weight", "att.W_query.weight")) for key in state)
        if blocks != shape.n_layers:
            # Before building: a damaged n_layer (1e9) would take forever to build.
            raise UserError(
                f"{directory / 'config.json'} has n_layer={shape.n_layers}, but the weights "
                f"beside it hold {blocks} blocks: the folder's files do not belong together. "
                "Export or download the model again."
            )
        model = build_from_state(shape, state, str(directory))
        return Trained(model, tokenizer, labels)
    from pipeline.model.hf import HFModel

    classifier = any("ForSequenceClassification" in a for a in config.get("architectures", []))
    # transformers writes id2label, not num_labels; one logit is our binary classifier.
    n_outputs = (len(config.get("id2label") or {}) or len(labels) or 2) if classifier else None
    pad_id = tokenizer.pad_id if tokenizer else config.get("pad_token_id") or 0
    model = HFModel.from_pretrained(directory, n_outputs, pad_id, labels)
    return Trained(model, tokenizer, labels)
