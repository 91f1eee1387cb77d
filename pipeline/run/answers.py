"""An instruct model's answers to a split (python -m pipeline.evaluate on data.task=instruct):
each conversation's last assistant turn is generated greedily from the turns before it,
stopping at the end-of-turn token, and scored against the reference.

- exact match: the answer equals the reference after stripping surrounding whitespace;
- token F1: SQuAD's overlap score of the two as bags of words (lowercased, punctuation and
  English articles removed), averaged over the examples.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import torch

from pipeline.build.trained import Trained
from pipeline.data.chat import chat_prompt
from pipeline.data.instruct import Conversation


def answer_all(
    trained: Trained, conversations: list[Conversation], max_new_tokens: int
) -> list[dict[str, str]]:
    """{prompt, reference, answer} for each conversation."""
    model, tokenizer = trained.model.eval(), trained.tokenizer
    rows = []
    for conversation in conversations:
        *before, last = conversation
        prompt = chat_prompt(tokenizer, before)
        ids = tokenizer.encode(prompt)[-model.context_length :]
        out = model.generate(
            torch.tensor([ids]), max_new_tokens, temperature=0, eos_id=tokenizer.eos_id
        )
        answer = tokenizer.decode(out[0, len(ids) :].tolist())
        rows.append(
            {"prompt": before[-1]["content"], "reference": last["content"], "answer": answer}
        )
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
