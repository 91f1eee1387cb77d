"""A new model for a training run: the data and tokenizer, the model (pretrained weights
loaded when model.init_from is set), the layers sparsity targets, and LoRA adapters."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pipeline.assembly.restore import load_pretrained
from pipeline.assembly.trained import Trained
from pipeline.config.model import check_context
from pipeline.config.train import TrainConfig
from pipeline.data.bundle import DataBundle
from pipeline.data.preparation import build_data
from pipeline.data.tokenizer import TextTokenizer, has_tokenizer
from pipeline.errors import UserError
from pipeline.model.attention import Attention
from pipeline.model.gpt import GPTConfig, GPTModel
from pipeline.weights.load import load_into


def build_model(cfg: TrainConfig) -> tuple[Trained, DataBundle]:
    """Data, tokenizer and model, with LoRA adapters when a lora preset is chosen. The layers
    sparsity targets are resolved first, on the model without adapters."""
    trained, bundle = _hf(cfg) if _uses_hf(cfg, announce=True) else _gpt(cfg)
    check_context(cfg.data.max_length, trained.model.context_length, bool(cfg.model.init_from))
    if cfg.sparsity.active:
        from pipeline.sparsity.targets import target_layers

        trained.sparse_layers = target_layers(trained.model, cfg.sparsity.target_modules)
    if cfg.lora.enabled:
        from pipeline.lora import apply_lora

        trained.model = apply_lora(trained.model, cfg.lora)
        trained.lora = cfg.lora.model_dump(mode="json")
        if cfg.model.init_from:
            trained.base = str(Path(cfg.model.init_from).expanduser().resolve())
    # transformers hands models over in eval mode, and Lightning keeps each module's mode:
    # dropout (LoRA's too) would be off in training.
    trained.model.train()
    return trained, bundle


def _uses_hf(cfg: TrainConfig, announce: bool = False) -> bool:
    """model=hf, or a GGUF file of another architecture than GPT-2."""
    gguf = _gguf(cfg.model.init_from, announce)
    return cfg.model.arch == "hf" or (gguf is not None and gguf.architecture != "gpt2")


def _gguf(init_from: str | None, announce: bool):
    """What a GGUF model.init_from holds (None for other layouts), announced at start-up: its
    architecture picks our GPT or transformers, without model=hf."""
    if not init_from or Path(init_from).suffix != ".gguf":
        return None
    from pipeline.weights.gguf import inspect

    info = inspect(Path(init_from).expanduser())
    if announce:
        print(
            f"{info.path.name}: a {info.architecture} GGUF file, tensors {info.describe}; "
            "dequantized to float32 for training."
        )
    return info


def gpt_config(cfg: TrainConfig, bundle: DataBundle, pretrained: GPTConfig | None) -> GPTConfig:
    """The model's shape: the preset and overrides, or the pretrained model's; the head from
    the task; the vocabulary from the tokenizer unless given."""
    m = cfg.model
    attention = Attention(**m.attention.model_dump())
    if pretrained is not None:
        shape = replace(pretrained, drop_rate=m.drop_rate, attention=attention)
    else:
        shape = GPTConfig(
            **m.model_dump(exclude={"name", "arch", "init_from", "vocab_size", "attention"}),
            vocab_size=m.vocab_size or bundle.tokenizer.vocab_size,
            attention=attention,
        )
    if shape.vocab_size < bundle.tokenizer.vocab_size:
        raise UserError(
            f"model.vocab_size={shape.vocab_size} is smaller than the tokenizer's vocabulary "
            f"({bundle.tokenizer.vocab_size} tokens). Set model.vocab_size=null to size it "
            "from the tokenizer, or lower data.tokenizer.vocab_size."
        )
    return replace(shape, n_outputs=bundle.n_outputs)


def _gpt(cfg: TrainConfig) -> tuple[Trained, DataBundle]:
    pretrained = load_pretrained(cfg.model.init_from) if cfg.model.init_from else None
    tokenizer = pretrained.tokenizer if pretrained else None
    if cfg.data.tokenizer.path:
        tokenizer = TextTokenizer.load(cfg.data.tokenizer.path)
    bundle = build_data(cfg.data, cfg.seed, tokenizer)
    model = GPTModel(gpt_config(cfg, bundle, pretrained.shape if pretrained else None))
    if pretrained is not None:
        # A classifier gets a new head sized from its labels; the pretrained head is dropped.
        load_into(model, pretrained.state, str(cfg.model.init_from), new_head=not model.is_lm)
    return Trained(model, bundle.tokenizer, bundle.label_names), bundle


def data_tokenizer(cfg: TrainConfig) -> TextTokenizer | None:
    """The tokenizer a run of `cfg` starts its data with (None: one trained on the data), as
    build_model chooses it, without building the model (python -m pipeline.prepare)."""
    if cfg.data.tokenizer.path:
        return TextTokenizer.load(cfg.data.tokenizer.path)
    if _uses_hf(cfg):
        return _pretrained_tokenizer(cfg, Path(cfg.model.init_from).expanduser())
    return load_pretrained(cfg.model.init_from).tokenizer if cfg.model.init_from else None


def _hf(cfg: TrainConfig) -> tuple[Trained, DataBundle]:
    """A Hugging Face model directory with its own tokenizer (model=hf)."""
    from pipeline.model.hf import HFModel

    directory = Path(cfg.model.init_from).expanduser()
    bundle = build_data(cfg.data, cfg.seed, _pretrained_tokenizer(cfg, directory))
    model = HFModel.from_pretrained(
        directory, bundle.n_outputs, bundle.tokenizer.pad_id, bundle.label_names
    )
    return Trained(model, bundle.tokenizer, bundle.label_names), bundle


def _pretrained_tokenizer(cfg: TrainConfig, source: Path) -> TextTokenizer:
    """data.tokenizer.path, else the pretrained model's own: in its directory or GGUF file."""
    if cfg.data.tokenizer.path:
        return TextTokenizer.load(cfg.data.tokenizer.path)
    if source.suffix == ".gguf":
        from pipeline.weights.gguf import read_tokenizer

        return read_tokenizer(source)
    if not has_tokenizer(source):
        raise UserError(
            f"{source} has no tokenizer (tokenizer.json, or vocab.json + merges.txt), and a "
            "pretrained model needs the tokenizer it was trained with. Set "
            "data.tokenizer.path=<its tokenizer>."
        )
    return TextTokenizer.load(source)
