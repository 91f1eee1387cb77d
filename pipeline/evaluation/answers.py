"""An instruct model's answers to a split (python -m pipeline.evaluate on data.task=instruct):
each conversation's last assistant turn is generated greedily from the turns before it,
stopping at the end-of-turn token, and scored against the reference.

- exact match: the answer equals the reference after stripping surrounding whitespace;
- token F1: SQuAD's overlap score of the two as bags of words (lowercased, punctuation and
  English articles removed), averaged over the examples.

Answers are written one line each as they come (`responses.jsonl.partial`, renamed to
`responses.jsonl` once all are in), so an evaluation stopped by a signal keeps what it
generated; a progress line says how far it is.
"""

from __future__ import annotations

import json
import os
import re
import string
from collections import Counter
from pathlib import Path

import torch

from pipeline.assembly.trained import Trained
from pipeline.data.chat import chat_prompt
from pipeline.data.instruct import Conversation
from pipeline.evaluation.interrupt import StopOnSignal
from pipeline.progress import ProgressLines


def answer_all(
    trained: Trained,
    conversations: list[Conversation],
    max_new_tokens: int,
    out: Path | None = None,
    stop: StopOnSignal | None = None,
    progress_s: float | None = None,
) -> list[dict[str, str]]:
    """{prompt, reference, answer} for each conversation; each row appended to `out` (then
    renamed to its final name, `out` without `.partial`) as soon as it is generated. `stop`
    ends the loop between two answers; `progress_s`: seconds between progress lines."""
    model, tokenizer = trained.model.eval(), trained.tokenizer
    device = next(model.parameters()).device
    progress = ProgressLines("answer", len(conversations), progress_s) if progress_s else None
    rows: list[dict[str, str]] = []
    sink = out.open("w", encoding="utf-8") if out else None
    try:
        for conversation in conversations:
            if stop:
                stop.check(f"{len(rows)} of {len(conversations)} answers generated")
            *before, last = conversation
            prompt = chat_prompt(tokenizer, before)
            ids = tokenizer.encode(prompt)[-model.context_length :]
            out_ids = model.generate(
                torch.tensor([ids], device=device),
                max_new_tokens,
                temperature=0,
                eos_id=tokenizer.eos_id,
            )
            answer = tokenizer.decode(out_ids[0, len(ids) :].tolist())
            row = {"prompt": before[-1]["content"], "reference": last["content"], "answer": answer}
            rows.append(row)
            if sink:
                sink.write(json.dumps(row) + "\n")
                sink.flush()
            if progress:
                progress.update(len(rows), force=len(rows) == len(conversations))
    finally:
        if sink:
            sink.close()
    if out:
        os.replace(out, out.with_suffix(""))
    return rows


def scores(rows: list[dict[str, str]]) -> dict[str, float]:
    n = max(len(rows), 1)
    exact = sum(r["answer"].strip() == r["reference"].strip() for r in rows)
    f1 = sum(token_f1(r["answer"], r["reference"]) for r in rows)
    return {"exact_match": round(exact / n, 6), "token_f1": round(f1 / n, 6)}


def token_f1(answer: str, reference: str) -> float:
    ours, theirs = _words(answer), _words(reference)
    common = sum((Counter(ours) & Counter(theirs)).values())
    if not ours or not theirs:
        return float(ours == theirs)
    if common == 0:
        return 0.0
    precision, recall = common / len(ours), common / len(theirs)
    return 2 * precision * recall / (precision + recall)


def _words(text: str) -> list[str]:
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return re.sub(r"\b(a|an|the)\b", " ", text).split()
