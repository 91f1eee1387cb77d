"""Damaged and unusual weight files, pipes, links and a tiny export for the bad-input table
(tests/test_bad_input.py, tests/bad_locations.py) and the fuzzers: each a function that
writes its file into a test's folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch


def gpt_weights(name: str, emb_dim: int) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        from pipeline.model.gpt import GPTConfig, GPTModel

        model = GPTModel(GPTConfig(600, 128, emb_dim, n_heads=2, n_layers=2))
        torch.save(model.state_dict(), tmp / name)

    return setup


def truncated_weights(tmp: Path) -> None:
    from safetensors.torch import save_file

    save_file({"tok_emb.weight": torch.randn(600, 64)}, tmp / "whole.safetensors")
    data = (tmp / "whole.safetensors").read_bytes()
    (tmp / "cut.safetensors").write_bytes(data[: len(data) // 2])


def gguf_file(name: str, cut: bool = False, architecture: str = "gpt2") -> Callable[[Path], None]:
    """A small GGUF file written with gguf's writer: whole, cut in half, or of another
    architecture."""

    def setup(tmp: Path) -> None:
        import logging

        import gguf
        import numpy as np

        logging.getLogger("gguf").setLevel(logging.WARNING)
        path = tmp / name
        writer = gguf.GGUFWriter(path, architecture)
        writer.add_block_count(1)
        writer.add_tensor("token_embd.weight", np.zeros((600, 64), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        if cut:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return setup


def damaged_pickle(tmp: Path) -> None:
    """A torch file whose pickle names a tensor in bytes that are not UTF-8 (a flipped byte)."""
    torch.save({"tok_emb.weight": torch.zeros(600, 64)}, tmp / "flipped.pth")
    data = bytearray((tmp / "flipped.pth").read_bytes())
    data[data.index(b"tok_emb.weight")] ^= 0xFF
    (tmp / "flipped.pth").write_bytes(bytes(data))


def integer_weights(tmp: Path) -> None:
    from safetensors.torch import save_file

    from pipeline.model.gpt import GPTConfig, GPTModel

    model = GPTModel(GPTConfig(600, 128, 64, n_heads=2, n_layers=2))
    state = {k: v.to(torch.int8) for k, v in model.state_dict().items()}
    save_file(
        {k: v.contiguous() for k, v in state.items() if k != "out_head.weight"},
        str(tmp / "int8.safetensors"),
    )


def gguf_damaged_value(tmp: Path) -> None:
    """A GGUF file whose architecture string is not UTF-8 (gguf decodes values lazily)."""
    gguf_file("bad.gguf")(tmp)
    data = (tmp / "bad.gguf").read_bytes()
    (tmp / "bad.gguf").write_bytes(data.replace(b"gpt2", b"\xff\xfegp", 1))


def hf_folder_with_layers(n_layer: int) -> Callable[[Path], None]:
    """A GPT-2 export of gpt-tiny (2 blocks) whose config.json says `n_layer`."""

    def setup(tmp: Path) -> None:
        import json

        from pipeline.model.gpt import GPTConfig, GPTModel
        from pipeline.weights.gpt2 import save_hf

        save_hf(GPTModel(GPTConfig(600, 128, 64, n_heads=2, n_layers=2)), tmp / "hf")
        config = json.loads((tmp / "hf" / "config.json").read_text())
        (tmp / "hf" / "config.json").write_text(json.dumps({**config, "n_layer": n_layer}))

    return setup


class _RunsCode:
    """A pickle that would run a shell command when loaded without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def code_pickle(tmp: Path) -> None:
    torch.save({"tok_emb.weight": torch.zeros(2), "x": _RunsCode(tmp / "pwned")}, tmp / "evil.pth")


def fifo(name: str) -> Callable[[Path], None]:
    """A named pipe: a reader waits on it forever, and a writer's rename replaces it."""
    return lambda tmp: os.mkfifo(tmp / name)


def link(name: str, target: str) -> Callable[[Path], None]:
    """A symbolic link to `target` (to itself: a loop; to a missing name: a link to nothing)."""
    return lambda tmp: (tmp / name).symlink_to(tmp / target)


def hf_export(tmp: Path) -> None:
    """A tiny GPT language model exported with its tokenizer, in export/hf/."""
    from pipeline.assembly.trained import Trained
    from pipeline.data.tokenizer import TextTokenizer
    from pipeline.formats import export_trained
    from pipeline.model.gpt import GPTConfig, GPTModel

    tokenizer = TextTokenizer.train([f"message {i}" for i in range(30)], 300, 1)
    model = GPTModel(GPTConfig(tokenizer.vocab_size, 16, 8, n_heads=2, n_layers=1))
    export_trained(Trained(model, tokenizer), ["hf"], tmp / "export")


def parquet_rows(name: str, rows: list[dict], cut: bool = False) -> Callable[[Path], None]:
    """A Parquet file of `rows` (pyarrow's writer), whole or cut short (no footer)."""

    def setup(tmp: Path) -> None:
        import pyarrow.parquet as pq

        pq.write_table(_table(rows), tmp / name)
        if cut:
            _cut(tmp / name)

    return setup


def arrow_rows(name: str, rows: list[dict], cut: bool = False) -> Callable[[Path], None]:
    """An Arrow IPC file of `rows` (what .arrow and .feather files are), whole or cut short."""

    def setup(tmp: Path) -> None:
        import pyarrow as pa

        table = _table(rows)
        with pa.OSFile(str(tmp / name), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        if cut:
            _cut(tmp / name)

    return setup


def saved_dataset(
    name: str, rows: list[dict], splits: tuple[str, ...] = (), cut: bool = False
) -> Callable[[Path], None]:
    """A folder written by datasets' save_to_disk: one Dataset, or a DatasetDict of `splits`
    (each holding `rows`); `cut` cuts its Arrow file short."""

    def setup(tmp: Path) -> None:
        import datasets

        datasets.disable_progress_bars()
        dataset = datasets.Dataset(_table(rows))  # from_list too keeps the first row's keys
        if splits:
            dataset = datasets.DatasetDict({split: dataset for split in splits})
        dataset.save_to_disk(str(tmp / name))
        if cut:
            (arrow,) = (tmp / name).glob("data-*.arrow")
            _cut(arrow)

    return setup


def _table(rows: list[dict]):
    """`rows` as an Arrow table with every key any row has (from_pylist takes the first row's
    keys as the columns), null where a row has none: as a table of such records is written."""
    import pyarrow as pa

    keys = list(dict.fromkeys(key for row in rows for key in row))
    return pa.Table.from_pylist([{key: row.get(key) for key in keys} for row in rows])


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
