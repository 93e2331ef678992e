"""Per-item scores of a candidate's answer against the reference (the teacher's, or a
reviewer's correction). Pure functions on OpenAI assistant messages; nothing here may raise
on a candidate's garbage: malformed output scores as wrong.

Tool calling (what NVIDIA's blueprint reports): function-name accuracy, function name and
arguments accuracy (arguments compared as parsed JSON: key order ignored, `"42"`/`42`/`42.0`
equal, strings trimmed), and whether a tool call that was due came out well-formed. Free
text: exact match, token F1 and ROUGE-L (embedding similarity and LLM ratings live in
`flywheel/judge.py`, which holds the models).
"""

from __future__ import annotations

import json
import re
from typing import Any

TOKEN = re.compile(r"\w+", re.UNICODE)
PRIMARY = {"tool_calling": "function_name_and_args", "generic": "token_f1"}  # the metric a decision reads
NO_CALL: list[tuple[str, Any]] = []


def tool_calls(message: dict[str, Any] | None) -> list[tuple[str, Any]] | None:
    """(name, parsed arguments) per call; None when any call is malformed."""
    if not isinstance(message, dict):
        return None
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            return None
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                return None
        if not isinstance(arguments, dict):
            return None
        calls.append((function["name"], arguments))
    return calls


def normalize(value: Any) -> Any:
    """Comparable form of a JSON value: numbers (and numeric strings) as floats, strings
    trimmed, objects with sorted keys."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            return text
    if isinstance(value, dict):
        return {str(key): normalize(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [normalize(item) for item in value]
    return value


def text_of(message: dict[str, Any] | None) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else ""


def tool_scores(candidate: dict[str, Any] | None, reference: dict[str, Any]) -> dict[str, float]:
    """`function_name`, `function_name_and_args` (1/0) and, when the reference calls a
    tool, `valid_call` (the candidate produced a well-formed call)."""
    expected = tool_calls(reference) or NO_CALL
    got = tool_calls(candidate)
    scores: dict[str, float] = {}
    if expected:
        scores["valid_call"] = float(bool(got))
    if got is None:
        return {"function_name": 0.0, "function_name_and_args": 0.0, **scores}
    if not expected:  # the teacher answered in text: so must the candidate
        right = float(not got)
        return {"function_name": right, "function_name_and_args": right, **scores}
    names = [name for name, _ in got] == [name for name, _ in expected]
    arguments = names and all(normalize(a) == normalize(b) for (_, a), (_, b) in zip(got, expected, strict=True))
    return {"function_name": float(names), "function_name_and_args": float(arguments), **scores}


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def token_f1(candidate: str, reference: str) -> float:
    got, want = tokens(candidate), tokens(reference)
    if not got or not want:
        return float(got == want)
    common = sum(min(got.count(token), want.count(token)) for token in set(got))
    if not common:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1: longest common subsequence of tokens."""
    got, want = tokens(candidate), tokens(reference)
    if not got or not want:
        return float(got == want)
    previous = [0] * (len(want) + 1)
    for token in got:
        current = [0]
        for j, other in enumerate(want):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if not lcs:
        return 0.0
    precision, recall = lcs / len(got), lcs / len(want)
    return 2 * precision * recall / (precision + recall)


def text_scores(candidate: dict[str, Any] | None, reference: dict[str, Any]) -> dict[str, float]:
    got, want = text_of(candidate), text_of(reference)
    return {"exact_match": float(" ".join(tokens(got)) == " ".join(tokens(want))),
            "token_f1": token_f1(got, want), "rouge_l": rouge_l(got, want)}
