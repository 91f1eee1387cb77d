"""Property-based fuzzing of weight files (Hypothesis): a real run's checkpoint and exports
(.ckpt, .safetensors, .pth, a sharded Hugging Face folder with its index, GGUF), cut short,
with another format's magic bytes, a flipped byte, tensors of other dtypes or shapes, keys
dropped or renamed, a shard index or config.json that does not match, fed to the weight
readers behind model.init_from and ckpt=. Each either gives a model that runs a forward pass,
or is refused with a UserError of one paragraph that names the file; any other exception would
reach the user as a traceback.

The suite runs a fixed sample through the library functions; `make fuzz` runs new ones through
the command line, end to end."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pipeline.assembly.restore import load_pretrained, load_trained
from pipeline.errors import UserError
from pipeline.model.gpt import GPTConfig, GPTModel
from pipeline.weights.load import load_into
from tests.fuzzing import check_outcome, fuzz_only_settings, fuzz_settings
from tests.helpers import TINY, run_cli, train_in_process

DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8, torch.bool]
MAGICS = [b"GGUF", b"PK\x03\x04", b"\x80\x02", b"\x00" * 8, b"\xff" * 8, b"{}"]


class Sources(dict):
    def __repr__(self) -> str:  # Hypothesis prints the arguments of a failing case
        return "<a run's checkpoint and exports>"


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    """A real language-model run's files: its checkpoint, and its exports as safetensors in
    shards with an index, a torch pickle and GGUF."""
    tmp = tmp_path_factory.mktemp("weights-fuzz")
    formats = "export.formats=[hf,weights,gguf]"
    record = train_in_process(
        [
            "data=demo_lm",
            "trainer.max_steps=1",
            "trainer.max_epochs=null",
            formats,
            "export.max_shard_size=60KB",
            "data.val_fraction=0",
            "data.test_fraction=0",
        ],
        tmp,
    )
    export = tmp / "run" / "export"
    shards = sorted((export / "hf").glob("model-*.safetensors"))
    assert len(shards) > 1, "the export is not sharded"
    return Sources(
        ckpt=Path(record["paths"]["last_checkpoint"]),
        hf=export / "hf",
        pth=export / "weights" / "model.pth",
        safetensors=shards[0],
        gguf=next((export / "gguf").glob("*.gguf")),
    )


# What to damage and how: (source, part of it, how, which reader, the seed of the details).
# The details come from the seed so that drawing a case does nothing to the files.
PLANS = st.tuples(
    st.sampled_from(["ckpt", "gguf", "hf", "pth", "safetensors"]),
    st.sampled_from(["bytes", "tensors", "json"]),
    st.sampled_from(["init_from", "ckpt"]),
    st.integers(0, 2**32 - 1),
)


def damaged(plan: tuple[str, str, str, int], sources: Sources, folder: Path) -> tuple[str, Path]:
    """(the reader to use: init_from or ckpt, the damaged copy)."""
    kind, how, reader, seed = plan
    rng = random.Random(seed)
    source = sources[kind]
    target = folder / source.name
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)
    victim = target
    if target.is_dir():
        # A file of the kind the damage is for, where the folder has one.
        files = sorted(target.iterdir())
        suffixes = {"json": (".json",), "tensors": (".safetensors",)}.get(how, ())
        victim = rng.choice([p for p in files if p.suffix in suffixes] or files)
    if how == "json" and victim.suffix == ".json":
        _damage_json(rng, victim)
    elif how == "tensors" and victim.suffix in (".safetensors", ".pth", ".ckpt"):
        _damage_tensors(rng, victim)
    else:
        _damage_bytes(rng, victim)
    # ckpt= reads whole models only: a bare weights file there is refused by design.
    return reader if kind in ("ckpt", "hf", "gguf") else "init_from", target


def _damage_bytes(rng: random.Random, path: Path) -> None:
    data = bytearray(path.read_bytes())
    how = rng.choice(["cut", "magic", "flip", "empty", "junk"])
    if how == "cut":
        data = data[: rng.randint(0, max(0, len(data) - 1))]
    elif how == "magic":
        magic = rng.choice(MAGICS)
        data[: len(magic)] = magic
    elif how == "flip" and data:
        # Mostly in the header, where the layout is described.
        at = rng.randint(0, min(len(data) - 1, rng.choice([64, 512, len(data)])))
        data[at] ^= 0xFF
    elif how == "empty":
        data = bytearray()
    else:
        data += b"\x00junk" * rng.randint(1, 100)
    path.write_bytes(bytes(data))


def _damage_tensors(rng: random.Random, path: Path) -> None:
    from safetensors.torch import load_file, save_file

    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        whole = torch.load(path, weights_only=True)
        state = whole["state_dict"] if path.suffix == ".ckpt" else whole
    name = rng.choice(sorted(state))
    how = rng.choice(["dtype", "drop", "rename", "shape", "extra"])
    if how == "dtype":
        state[name] = state[name].to(rng.choice(DTYPES))
    elif how == "drop":
        del state[name]
    elif how == "rename":
        state[name + "_renamed"] = state.pop(name)
    elif how == "shape":
        state[name] = state[name].flatten()[: max(1, state[name].numel() // 2)].clone()
    else:
        state["extra.weight"] = torch.zeros(3)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif path.suffix == ".ckpt":
        whole["state_dict"] = state
        torch.save(whole, path)
    else:
        torch.save(state, path)


def _damage_json(rng: random.Random, path: Path) -> None:
    content = json.loads(path.read_text())
    how = rng.choice(["invalid", "type", "drop", "value"])
    if how == "invalid":
        path.write_text(path.read_text()[: rng.randint(0, 20)])
        return
    key = rng.choice(sorted(content) or ["weight_map"])
    if how == "drop":
        content.pop(key, None)
    elif how == "type":
        content[key] = rng.choice([[], "64", None, 3.5, {"a": 1}])
    elif key == "weight_map" and isinstance(content.get(key), dict):
        # A shard index that names a missing shard, or one outside the folder.
        tensor = rng.choice(sorted(content[key]))
        content[key][tensor] = rng.choice(["missing.safetensors", "../x.safetensors"])
    else:
        content[key] = rng.choice([-1, 0, 10**9, "gpt2", "llama", True])
    path.write_text(json.dumps(content))


def load_or_refuse(reader: str, path: Path) -> None:
    """What model.init_from (weights for our GPT) or ckpt= (a whole model) does with `path`:
    a model that runs, or a UserError naming the file."""
    try:
        if reader == "ckpt":
            model = load_trained(path).model
        else:
            pretrained = load_pretrained(path)
            model = GPTModel(pretrained.shape or GPTConfig(600, 128, 64, 2, 2))
            load_into(model, pretrained.state, str(path))
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message.strip(), message
        assert path.name in message, f"the error does not name the file: {message}"
        return
    ids = torch.randint(0, 100, (1, 8))
    logits = model(ids)
    assert torch.is_floating_point(logits), logits.dtype


@fuzz_settings(suite_examples=60)
@given(plan=PLANS)
def test_a_damaged_weights_file_loads_or_is_refused_naming_the_file(
    sources, tmp_path_factory, plan
) -> None:
    load_or_refuse(*damaged(plan, sources, tmp_path_factory.mktemp("damaged")))


@pytest.mark.fuzz
@fuzz_only_settings(default_examples=30)
@given(plan=PLANS)
def test_a_damaged_weights_file_on_the_command_line(sources, tmp_path_factory, capsys, plan):
    """End to end: `train model.init_from=<file>` (in this process) or `evaluate ckpt=<file>`."""
    from tests.test_bad_input import run_train

    folder = tmp_path_factory.mktemp("damaged")
    reader, path = damaged(plan, sources, folder)
    outputs = folder / "outputs"
    if reader == "ckpt":
        result = run_cli("evaluate", f"ckpt={path}", f"paths.outputs={outputs}", "logger=none")
        code, stderr = result.returncode, result.stderr
    else:
        args = [f"paths.outputs={outputs}", *TINY, "data=demo_lm", "trainer.max_steps=1"]
        code, stderr = run_train([*args, f"model.init_from={path}"], capsys)
    check_outcome(code, stderr, outputs)
