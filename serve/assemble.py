"""Turning a streamed OpenAI response (SSE chunks) back into the response it stands for,
so a streamed request is logged like a non-streamed one; on the way, each chunk's `id`
becomes the log record's id."""

from __future__ import annotations

import json
import time
from typing import Any


class StreamAssembler:
    def __init__(self, log_id: str, endpoint: str):
        self.log_id = log_id
        self.endpoint = endpoint
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, int] | None = None
        self.model: str | None = None
        self.created: int | None = None
        self.error: str | None = None
        self.first_token_at: float | None = None

    def rewrite(self, chunk: str) -> str:
        """Record what `chunk` carries and return it with our id."""
        events = []
        for event in chunk.split("\n\n"):
            if event.startswith("data: ") and event != "data: [DONE]":
                try:
                    data = json.loads(event[6:])
                except json.JSONDecodeError:
                    events.append(event)
                    continue
                self._absorb(data)
                if "id" in data:
                    data["id"] = self.log_id
                event = "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":"))
            events.append(event)
        return "\n\n".join(events)

    def _absorb(self, data: dict[str, Any]) -> None:
        if "error" in data:
            self.error = str(data["error"].get("message", data["error"]))
            return
        self.model = data.get("model", self.model)
        self.created = data.get("created", self.created)
        if data.get("usage"):
            self.usage = data["usage"]
        for choice in data.get("choices") or []:
            slot = self.choices.setdefault(choice.get("index", 0), {"text": [], "tool_calls": {}, "finish": None})
            delta = choice.get("delta") or {}
            piece = choice.get("text") if self.endpoint == "completion" else delta.get("content")
            if piece:
                slot["text"].append(piece)
                self.first_token_at = self.first_token_at or time.perf_counter()
            for call in delta.get("tool_calls") or []:
                self.first_token_at = self.first_token_at or time.perf_counter()
                built = slot["tool_calls"].setdefault(call.get("index", 0), {
                    "id": call.get("id"), "type": "function", "function": {"name": "", "arguments": ""}})
                function = call.get("function") or {}
                built["function"]["name"] += function.get("name") or ""
                built["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                slot["finish"] = choice["finish_reason"]

    def response(self) -> dict[str, Any] | None:
        """The equivalent non-streamed response; None when the stream failed."""
        if self.error is not None:
            return None
        choices = []
        for index, slot in sorted(self.choices.items()):
            text = "".join(slot["text"])
            if self.endpoint == "completion":
                choices.append({"index": index, "text": text, "finish_reason": slot["finish"]})
                continue
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if slot["tool_calls"]:
                message["tool_calls"] = [call for _, call in sorted(slot["tool_calls"].items())]
            choices.append({"index": index, "message": message, "finish_reason": slot["finish"]})
        body = {"id": self.log_id, "object": "chat.completion" if self.endpoint == "chat" else "text_completion",
                "created": self.created, "model": self.model, "choices": choices}
        if self.usage:
            body["usage"] = self.usage
        return body
