"""Answers scored by a judge model, as the teaching texts do with Llama 3 through Ollama: any
OpenAI-compatible chat endpoint (Ollama at http://127.0.0.1:11434/v1, llama.cpp's
llama-server, vLLM, `transformers serve`) scores each answer from 0 to 100 against the
reference, with a fixed prompt and deterministic settings (temperature 0, a fixed seed)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

from pipeline.errors import UserError

PROMPT = (
    "Given the input `{prompt}` and correct output `{reference}`, score the model response "
    "`{answer}` on a scale from 0 to 100, where 100 is the best score. Respond with the "
    "integer number only."
)


def check_judge(url: str, timeout: float = 5.0) -> None:
    """A judge that does not answer is reported at once, before any answer is generated."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/models", timeout=timeout) as response:
            response.read()
    except (OSError, ValueError) as exc:
        raise UserError(
            f"The judge at {url} does not answer ({exc}). Start an OpenAI-compatible server "
            "there (ollama serve, llama-server, transformers serve <model>) or fix judge.url; "
            "without judge.url the answers are scored by exact match and token F1 only."
        ) from None


def judge_all(rows: list[dict[str, Any]], url: str, model: str, timeout: float) -> dict[str, float]:
    """Each row gets `judge_score` (None where the reply held no number from 0 to 100); the
    mean over the scored rows and how many were scored."""
    scores = []
    for row in rows:
        row["judge_score"] = _score(row, url, model, timeout)
        if row["judge_score"] is not None:
            scores.append(row["judge_score"])
    mean = sum(scores) / len(scores) if scores else float("nan")
    return {"judge_score": round(mean, 4), "judge_scored": len(scores)}


def _score(row: dict[str, Any], url: str, model: str, timeout: float) -> int | None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT.format(**row)}],
        "temperature": 0,
        "seed": 0,
        "max_tokens": 8,
    }
    request = urllib.request.Request(
        f"{url.rstrip('/')}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read())["choices"][0]["message"]["content"]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise UserError(f"The judge at {url} failed to score an answer ({exc}).") from None
    found = re.search(r"\b(100|\d{1,2})\b", reply or "")
    return int(found[1]) if found else None
