"""Loading a state dict into our GPT, with a diagnosis when it does not fit: which keys,
which shapes, and the config field that most likely differs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from pipeline.errors import UserError
from pipeline.model.gpt import GPTConfig, GPTModel
from pipeline.weights.gpt2 import from_hf_gpt2, is_hf_gpt2
from pipeline.weights.io import StateDict


def build_from_state(cfg: GPTConfig, state: StateDict, source: str) -> GPTModel:
    """A GPT holding `state`'s tensors themselves: built on the meta device with no random
    init to throw away, then the loaded (for safetensors, memory-mapped) tensors are
    assigned."""
    with _uninitialised(), torch.device("meta"):
        model = GPTModel(cfg)
    load_into(model, state, source, assign=True)
    return model


@contextlib.contextmanager
def _uninitialised() -> Iterator[None]:
    """torch.nn.init's functions do nothing while modules are built (transformers' loaders do
    the same). Not only for speed: on the meta device they run torch's Python reference
    kernels, whose first call imports torch._dynamo, seconds of a command's start-up."""
    init = torch.nn.init
    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_")]
    saved = {name: getattr(init, name) for name in names}
    try:
        for name in names:
            setattr(init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)


def load_into(
    model: GPTModel, state: StateDict, source: str, new_head: bool = False, assign: bool = False
) -> None:
    """Load `state` into `model`; any missing, unexpected or misshapen key is a UserError that
    names the first few keys, both shapes, and the config field that likely differs.

    With `new_head`, the file's output head is dropped and the model keeps its fresh one
    (a pretrained LM fine-tuned as a classifier). With `assign`, the tensors become the
    parameters instead of being copied into them.
    """
    if is_hf_gpt2(state):
        state = from_hf_gpt2(state, model.cfg)
    state = {k.removeprefix("model."): v for k, v in state.items()}
    expected = model.state_dict()
    if new_head:
        state = {k: v for k, v in state.items() if k != "out_head.weight"}
        state["out_head.weight"] = expected["out_head.weight"]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if mismatched:
        shown = ", ".join(
            f"{k} {tuple(state[k].shape)} in the file vs {tuple(expected[k].shape)} in the model"
            for k in mismatched[:3]
        )
        problems.append(f"shape mismatch: {shown}")
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:4])}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:4])}")
    if problems:
        raise UserError(
            f"The weights in {source} do not fit the model ({'; '.join(problems)}). "
            f"{_likely_field(state, expected, mismatched, missing, missing + unexpected)}"
        )
    model.load_state_dict(_as_model_dtypes(state, expected, source), strict=True, assign=assign)
    if model.cfg.tie_weights and model.cfg.is_lm:
        # Assignment gives the two names separate tensors; tie them again.
        model.out_head.weight = model.tok_emb.weight


def _as_model_dtypes(state: StateDict, expected: StateDict, source: str) -> StateDict:
    """Floating-point tensors in the model's dtype (a float16 or bfloat16 file trains in the
    model's precision); tensors of integers or booleans are no weights of this model."""
    wrong = [k for k, v in state.items() if not torch.is_floating_point(v)]
    if wrong:
        shown = ", ".join(f"{k} ({state[k].dtype})" for k in wrong[:3])
        raise UserError(
            f"The weights in {source} include tensors that are not floating point ({shown}): "
            "they are not this model's weights, or are quantized in a way this pipeline does "
            "not read. Pass the model's floating-point weights (.safetensors, .pth or GGUF)."
        )
    return {k: v.to(expected[k].dtype) for k, v in state.items()}


def _likely_field(
    state: StateDict,
    expected: StateDict,
    mismatched: list[str],
    missing: list[str],
    keys: list[str],
) -> str:
    """Which config field most likely explains the differences, from the shapes themselves."""
    rows = {k: (tuple(state[k].shape), tuple(expected[k].shape)) for k in mismatched}
    width = rows.get("tok_emb.weight") or rows.get("trf_blocks.0.norm1.weight")
    if width and width[0][-1] != width[1][-1]:
        return "model.emb_dim probably differs."
    if "pos_emb.weight" in rows:
        return "model.context_length probably differs."
    if "tok_emb.weight" in rows:
        return "model.vocab_size probably differs (the tokenizer must match the weights)."
    if "out_head.weight" in rows:
        return "The output head differs: the label count, or model.vocab_size."
    if mismatched:
        return "model.emb_dim or model.n_heads probably differs."
    if any(".att.W_" in k and k.endswith(".bias") for k in keys):
        return "model.qkv_bias probably differs."
    if any(k.startswith("trf_blocks.") for k in keys):
        return "model.n_layers probably differs."
    return "Check that the file was saved from a model of this shape."
