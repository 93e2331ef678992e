"""One logged inference -> one chat training example, or the reason it cannot be one.

`prepare_batch` is the per-record half of curation: it runs inside Ray Data's
`map_batches` on every worker (or directly, in tests), so it is a plain function of an
Arrow batch. For each record it applies the teacher filter, feedback (a correction
replaces the answer; negative feedback drops it), format validation, empty-answer and
length checks, PII redaction of every message and tool-call argument, and computes what
the global steps on the driver need: the label, the dedup key, the prefix, and the
example already encoded as JSON text, so the driver never parses a record again.
Records are decoded with msgspec into just the fields used (tool schemas stay raw text):
20x faster than `json.loads` of the whole ~4 KB record, which dominated the cost.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pyarrow

from flywheel.pii import Redactor
from flywheel.records import LogRecord, is_audit
from flywheel.store import LogFilter, LogStore

NO_TOOL = "no_tool"
ROLES = {"system", "user", "assistant", "tool"}
# Why a record is not an example, in the order the checks run (the manifest's steps).
REASONS = ("not_teacher", "negative_feedback", "invalid_format", "empty_answer", "too_short", "too_long")
OUTPUT = pyarrow.schema([
    ("id", pyarrow.string()), ("timestamp", pyarrow.float64()), ("reason", pyarrow.string()),
    ("label", pyarrow.string()), ("key", pyarrow.string()), ("text", pyarrow.large_string()),
    # The example as JSON text: the system message (or ""), the other turns. Tool schemas are
    # the same in most records and ~4 KB each, so a row carries their hash (or ""), and the
    # text only on the first row of its batch with that hash (else "").
    ("system", pyarrow.large_string()), ("turns", pyarrow.large_string()), ("tools_hash", pyarrow.string()),
    ("tools", pyarrow.large_string()),
    ("prefix", pyarrow.string()), ("source", pyarrow.string()), ("tokens", pyarrow.int64()),
    ("turn_tokens", pyarrow.int64()), ("pii", pyarrow.string()),
])
SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class ExampleRules:
    """What `prepare_batch` needs from the config (picklable, for Ray workers)."""

    teacher_models: tuple[str, ...] = ()
    min_tokens: int = 1
    max_tokens: int = 4096
    min_score: int = 5
    redact: bool = True
    custom_patterns: dict[str, str] = field(default_factory=dict)


class Rejected(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def estimate_tokens(text: str) -> int:
    """~4 characters per token: cheap, tokenizer-free and the same on every machine."""
    return len(text) // 4


def normalize(text: str) -> str:
    return SPACES.sub(" ", text).strip().lower()


def is_negative(rating: int | None, min_score: int) -> bool:
    """Thumbs down (-1), or a 0-10 score below `min_score`; 1 is a thumbs up."""
    return rating == -1 or (rating is not None and rating != 1 and 0 <= rating < min_score)


def _correction(feedback: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The latest reviewer correction, if any."""
    corrections = [item["correction"] for item in feedback or [] if isinstance(item, dict) and item.get("correction")]
    return corrections[-1] if corrections else None


def _answer(record: dict[str, Any], min_score: int) -> tuple[dict[str, Any], str]:
    """The assistant message to learn from and where it came from."""
    feedback = record.get("feedback") or []
    if (correction := _correction(feedback)) is not None:
        return correction, "correction"
    if any(is_negative(item.get("rating"), min_score) for item in feedback):
        raise Rejected("negative_feedback")
    try:
        return record["response"]["choices"][0]["message"], "teacher"
    except (KeyError, IndexError, TypeError):
        raise Rejected("invalid_format") from None


def _clean_message(message: Any) -> dict[str, Any]:
    """A valid OpenAI chat message, reduced to the fields training uses."""
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise Rejected("invalid_format")
    content = message.get("content")
    if isinstance(content, list):  # content parts: keep the text
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if content is not None and not isinstance(content, str):
        raise Rejected("invalid_format")
    cleaned: dict[str, Any] = {"role": message["role"], "content": content or ""}
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise Rejected("invalid_format")
        arguments = function.get("arguments", "{}")
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError:
            raise Rejected("invalid_format") from None
        if not isinstance(parsed, dict):
            raise Rejected("invalid_format")
        calls.append({"type": "function", "function": {"name": function["name"], "arguments": json.dumps(parsed)}})
    if calls:
        cleaned["tool_calls"] = calls
    if message["role"] == "tool" and message.get("tool_call_id"):
        cleaned["tool_call_id"] = message["tool_call_id"]
    return cleaned


def correction_problem(correction: dict[str, Any]) -> str | None:
    """Why curation could not learn from a reviewer's correction, or None when it can: what
    `POST /v1/feedback` refuses, since a correction curation rejects also drops the record's
    own answer (the correction replaces it)."""
    try:
        answer = _clean_message(correction)
    except Rejected:
        return ("not an OpenAI chat message: `role` system, user, assistant or tool, `content` text, each "
                "tool call a function `name` with JSON-object `arguments`")
    if answer["role"] != "assistant":
        return "must be the assistant's message (`role`: assistant)"
    if not answer["content"].strip() and not answer.get("tool_calls"):
        return "needs `content` or `tool_calls`"
    return None


def _redact(messages: list[dict[str, Any]], redactor: Redactor, counts: Counter) -> list[dict[str, Any]]:
    for message in messages:
        message["content"] = redactor.redact(message["content"], counts)
        for call in message.get("tool_calls", []):
            call["function"]["arguments"] = redactor.redact(call["function"]["arguments"], counts)
    return messages


class _Request(msgspec.Struct):
    messages: Any = None
    tools: msgspec.Raw = msgspec.Raw(b"null")  # passed through as text: never rebuilt as objects


class _Record(msgspec.Struct):
    """The fields of a stored `LogRecord` that curation reads; the rest is skipped unparsed."""

    model: str = ""
    base_model: str | None = None
    adapter: str | None = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    request: _Request = msgspec.field(default_factory=_Request)
    response: Any = None
    feedback: Any = None


_DECODE = msgspec.json.Decoder(_Record).decode
_ENCODE = msgspec.json.Encoder().encode


def answered_by(record: _Record | LogRecord) -> str:
    """The model that answered: `base` or `base:adapter` for served traffic (whatever alias
    the client named), the `model` field for imported records."""
    if record.base_model is None:
        return record.model
    return f"{record.base_model}:{record.adapter}" if record.adapter else record.base_model


def is_ground_truth(record: _Record, teacher_models: tuple[str, ...]) -> bool:
    """Whether curation may learn from the record's answer: a reviewer corrected it (ground
    truth whoever answered), or one of `teacher_models` gave it (none listed: any model
    without an adapter, so a student never learns from its own answers), and not as a
    candidate's shadow. A teacher's audit of a student (`tags.role` teacher) is one."""
    if _correction(record.feedback) is not None:
        return True
    if "shadow_of" in record.tags and not is_audit(record.tags):
        return False
    return answered_by(record) in teacher_models if teacher_models else record.adapter is None


def count_ground_truth(store: LogStore, filter: LogFilter, teacher_models: tuple[str, ...]) -> int:
    """How many of the records `filter` selects curation may learn from, read through the
    store's bulk scan (what starts a turn: flywheel/watch.py)."""
    counted = 0
    for partition in store.partitions(filter, 1):
        counted += sum(is_ground_truth(_DECODE(raw), teacher_models) for *_, raw in store.scan(partition))
    return counted


def to_example(record: _Record, rules: ExampleRules, redactor: Redactor | None) -> dict[str, Any]:
    """The example's columns (see `OUTPUT`), or `Rejected` with the reason."""
    if not is_ground_truth(record, rules.teacher_models):
        raise Rejected("not_teacher")
    answer, source = _answer({"response": record.response, "feedback": record.feedback}, rules.min_score)
    if not isinstance(record.request.messages, list) or not record.request.messages:
        raise Rejected("invalid_format")
    messages = [_clean_message(message) for message in record.request.messages] + [_clean_message(answer)]
    if messages[-1]["role"] != "assistant":
        raise Rejected("invalid_format")
    if not messages[-1]["content"].strip() and not messages[-1].get("tool_calls"):
        raise Rejected("empty_answer")
    tools_json = bytes(record.request.tools).decode()
    if tools_json in ("null", "[]"):
        tools_json = ""
    elif not tools_json.startswith("["):
        raise Rejected("invalid_format")
    counts: Counter = Counter()
    if redactor is not None:
        messages = _redact(messages, redactor, counts)
    has_system = messages[0]["role"] == "system"
    turns_json = _ENCODE(messages[1:] if has_system else messages).decode()
    system_json = _ENCODE(messages[0]).decode() if has_system else ""
    tokens = estimate_tokens(turns_json) + estimate_tokens(system_json) + estimate_tokens(tools_json)
    if tokens < rules.min_tokens:
        raise Rejected("too_short")
    if tokens > rules.max_tokens:
        raise Rejected("too_long")
    calls = messages[-1].get("tool_calls")
    text = normalize(" \n ".join(m["content"] for m in messages[:-1] if m["role"] == "user"))
    return {
        "label": calls[0]["function"]["name"] if calls else NO_TOOL,
        "key": hashlib.sha256(f"{text}\x00{tools_json}".encode()).hexdigest()[:32],
        "text": text, "system": system_json, "turns": turns_json, "tools": tools_json,
        "tools_hash": hashlib.sha256(tools_json.encode()).hexdigest()[:16] if tools_json else "",
        "prefix": hashlib.sha256(f"{system_json}\x00{tools_json}".encode()).hexdigest()[:16]
        if system_json or tools_json else "",
        "source": source, "tokens": tokens, "turn_tokens": estimate_tokens(turns_json),
        "pii": json.dumps(dict(sorted(counts.items()))) if counts else "",
    }


def prepare_batch(batch: pyarrow.Table, rules: ExampleRules) -> pyarrow.Table:
    """A batch of `read_logs` rows -> one `OUTPUT` row each; `reason` is empty for examples."""
    redactor = Redactor(rules.custom_patterns) if rules.redact else None
    empty = {"label": "", "key": "", "text": "", "system": "", "turns": "", "tools_hash": "", "tools": "",
             "prefix": "", "source": "", "tokens": 0, "turn_tokens": 0, "pii": ""}
    rows, tools_seen = [], set()
    for row_id, timestamp, record in zip(batch["id"].to_pylist(), batch["timestamp"].to_pylist(),
                                         batch["record"].to_pylist(), strict=True):
        try:
            row = {"reason": "", **to_example(_DECODE(record), rules, redactor)}
            if row["tools_hash"] in tools_seen:
                row["tools"] = ""
            tools_seen.add(row["tools_hash"])
        except Rejected as rejected:
            row = {"reason": rejected.reason, **empty}
        except (msgspec.DecodeError, AttributeError, TypeError):
            row = {"reason": "invalid_format", **empty}
        rows.append({"id": row_id, "timestamp": timestamp, **row})
    return pyarrow.Table.from_pylist(rows, schema=OUTPUT)
