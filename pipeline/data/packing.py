"""Packing (data.packing=true): several examples in each data.max_length row, so that a batch
holds trained tokens instead of padding. Each example keeps its own positions (they restart at
0) and attends only within itself; no target crosses from one example into the next. The
per-token losses of a packed batch equal those of the same examples unpacked (tests)."""

from __future__ import annotations


def pack(
    ids: list[list[int]], trained: list[list[bool]], max_length: int
) -> tuple[list[list[int]], list[list[bool]], list[list[int]]]:
    """Examples in order, each row filled until the next example would not fit: the rows'
    ids, trained flags and position ids."""
    rows: list[tuple[list[int], list[bool], list[int]]] = []
    for tokens, mask in zip(ids, trained, strict=True):
        if not rows or len(rows[-1][0]) + len(tokens) > max_length:
            rows.append(([], [], []))
        row_ids, row_mask, row_positions = rows[-1]
        row_ids += tokens
        row_mask += mask
        row_positions += range(len(tokens))
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
