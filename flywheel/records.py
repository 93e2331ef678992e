"""The one log-record schema, and reading the log formats users already have.

A `LogRecord` is an OpenAI request body, the OpenAI response it got, and who/what/how:
workload, client, model, adapter, latency, tokens, status, feedback. Ids are ULIDs, so
they sort by time; imported records keep the id our own export gave them, and others
get ids derived from their content, so importing a file twice (or restoring an export
into the store it came from) stores each record once.

Accepted input shapes (see ../shared/FORMATS.md):
- OpenAI request/response records, including NVIDIA's Data Flywheel Blueprint documents
  (`request`, `response`, `workload_id`, `client_id`, `timestamp`; tool-call `arguments`
  as a JSON object or a JSON string — stored as the OpenAI string form), and our own
  export (also `status`/`error`, where an errored record may have no response, and
  `feedback`);
- chat records (`messages`, optional `tools`; the last assistant message is the response).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from ulid import ULID

from flywheel.config import WORKLOAD_MAX_CHARS, workload_name_problem


class Feedback(BaseModel):
    """A human verdict on one answer; a correction is a better answer to learn from."""

    model_config = ConfigDict(extra="forbid")

    rating: int | None = Field(None, ge=-1, le=10, description="-1 thumbs down, 1 thumbs up, or a 0-10 score.")
    comment: str | None = Field(None, description="Free text from the reviewer.")
    correction: dict[str, Any] | None = Field(
        None, description="A better assistant message ({role, content, tool_calls}) for this request."
    )
    timestamp: float = Field(default_factory=time.time, description="When the feedback was given.")


def is_audit(tags: Mapping[str, str]) -> bool:
    """Whether a record's tags make it the teacher's audit of a student's answer: a
    background answer (`shadow_of`) the teacher gave. Any other background answer is a
    trial candidate's."""
    return "shadow_of" in tags and tags.get("role") == "teacher"


class LogRecord(BaseModel):
    """One inference: the OpenAI request and response, and how it went."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: str(ULID()), description="ULID: unique, sorts by time.")
    timestamp: float = Field(default_factory=time.time, description="Epoch seconds the request arrived.")
    workload_id: str = Field(description="What the traffic is for (one flywheel per workload).")
    client_id: str = Field(description="Who sent it.")
    model: str = Field(description="The `model` the client asked for (base, base:adapter or alias).")
    base_model: str | None = Field(None, description="The base model that answered.")
    adapter: str | None = Field(None, description="The adapter that answered, if any.")
    request: dict[str, Any] = Field(description="The OpenAI request body, credentials removed.")
    response: dict[str, Any] | None = Field(None, description="The OpenAI response (streams assembled).")
    usage: dict[str, int] | None = Field(None, description="prompt/completion/total tokens.")
    latency_ms: float | None = Field(None, description="Request arrival to last byte.")
    ttft_ms: float | None = Field(None, description="Time to first token (streams).")
    status: Literal["ok", "error"] = Field("ok", description="Whether a response was produced.")
    error: str | None = Field(None, description="What went wrong, when status is error.")
    feedback: list[Feedback] = Field(default_factory=list, description="Feedback, oldest first.")
    tags: dict[str, str] = Field(default_factory=dict, description="Free-form labels (source, import file...).")


def content_id(timestamp: float, *parts: Any) -> str:
    """A ULID whose time part is `timestamp` and whose random part is a hash of `parts`:
    the same record always gets the same id, and ids still sort by time."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    millis = max(0, int(timestamp * 1000)).to_bytes(6, "big")
    return str(ULID.from_bytes(millis + digest[:10]))


def _exported_id(obj: dict[str, Any]) -> str | None:
    """The record's own id when it carries one (our export: a served record's id is
    random, so its content would give another)."""
    try:
        return str(ULID.from_str(obj["id"])) if isinstance(obj.get("id"), str) else None
    except ValueError:
        return None


def canonical_tool_calls(message: dict[str, Any]) -> dict[str, Any]:
    """The message with every tool call's `arguments` as a JSON string (OpenAI's form)."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    fixed = []
    for call in calls:
        function = dict(call.get("function") or {})
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise ValueError("tool call without a function name")
        arguments = function.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        fixed.append({**call, "type": call.get("type", "function"), "function": {**function, "arguments": arguments}})
    return {**message, "tool_calls": fixed}


def _chat_response(message: dict[str, Any], model: str, created: float) -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "model": model,
        "created": int(created),
        "choices": [{"index": 0, "message": message,
                     "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
    }


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) and "role" in m for m in value):
        raise ValueError("`messages` must be a non-empty list of {role, content} objects")
    return value


def record_from_json(obj: Any, workload_id: str | None = None, client_id: str | None = None) -> LogRecord:
    """A `LogRecord` from one imported JSON object; `ValueError` says what is wrong.

    `workload_id` / `client_id` override the record's own; without either, the record must
    carry them (chat records, which carry none, default to `default` / `import`).
    """
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    stamped = obj.get("timestamp")
    if stamped is not None and (not isinstance(stamped, (int, float)) or isinstance(stamped, bool)):
        raise ValueError("`timestamp` must be epoch seconds")
    # Without its own timestamp a record is dated by the import, but its id must not
    # depend on when it was imported: re-importing the file must find the same ids.
    timestamp = time.time() if stamped is None else float(stamped)
    if "request" in obj:
        request = obj["request"]
        if not isinstance(request, dict):
            raise ValueError("`request` must be an object")
        _messages(request.get("messages"))
        status = obj.get("status", "ok")
        if status not in ("ok", "error"):
            raise ValueError("`status` must be `ok` or `error`")
        response = obj.get("response")
        if status == "error" and response is None:
            response = {"choices": []}  # a failed request: logged, never trained on
        elif not isinstance(response, dict) or not isinstance(response.get("choices"), list) or not response["choices"]:
            raise ValueError("`response` must be an OpenAI completion with `choices`")
        choices = []
        for choice in response["choices"]:
            if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
                raise ValueError("each response choice needs a `message` object")
            choices.append({**choice, "message": canonical_tool_calls(choice["message"])})
        response = {**response, "choices": choices}
        workload = workload_id or obj.get("workload_id")
        client = client_id or obj.get("client_id")
        if not workload or not client:
            raise ValueError("`workload_id` and `client_id` are required (or pass --workload / --client)")
        model = request.get("model") or response.get("model") or "unknown"
    elif "messages" in obj:
        messages = _messages(obj["messages"])
        last = messages[-1]
        if last.get("role") != "assistant":
            raise ValueError("the last message must be the assistant's answer")
        request = {"messages": messages[:-1]}
        if obj.get("tools"):
            request["tools"] = obj["tools"]
        _messages(request["messages"])
        model = obj.get("model", "unknown")
        response = _chat_response(canonical_tool_calls(last), model, timestamp)
        workload = workload_id or obj.get("workload_id") or "default"
        client = client_id or obj.get("client_id") or "import"
        status = "ok"
    else:
        raise ValueError("expected `request`/`response` (OpenAI or NVIDIA blueprint) or `messages` (chat)")
    if problem := workload_name_problem(str(workload)):  # it would name folders and turns
        raise ValueError(f"workload_id {str(workload)[:WORKLOAD_MAX_CHARS]!r}: {problem} (or pass --workload)")
    feedback = obj.get("feedback") or []
    if not isinstance(feedback, list):
        raise ValueError("`feedback` must be a list of {rating, comment, correction} objects")
    return LogRecord(
        id=_exported_id(obj) or content_id(stamped or 0, workload, client, request, response["choices"]),
        timestamp=timestamp,
        workload_id=str(workload),
        client_id=str(client),
        model=str(model),
        request=request,
        response=response if response["choices"] else None,
        usage=response.get("usage"),
        status=status,
        error=obj.get("error") if status == "error" else None,
        feedback=[Feedback.model_validate(item) for item in feedback],
        tags={"source": "import"},
    )
