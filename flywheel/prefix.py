"""A learned prefix: when curation prunes a workload's shared system prompt and tools
([S3]), the student is trained without them, so requests must reach it without them too.

This is the one rule for that, applied by the ingress to every request routed to such an
adapter; evaluation goes through the ingress, so it measures what live traffic gets.
"""

from __future__ import annotations

from typing import Any


def strip_prefix(body: dict[str, Any], prefix: dict[str, Any]) -> dict[str, Any] | None:
    """`body` as the student learned to read it, or None when `body` does not carry `prefix`.

    The system prompt goes; the tools stay in the request (vLLM's tool-call parser needs
    them) but are not rendered (`chat_template_kwargs.render_tools=false`, see
    templates/chatml_tools.jinja).
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        return None
    has_system = messages[0].get("role") == "system"
    if has_system != bool(prefix["system"]) or (has_system and messages[0].get("content") != prefix["system"]):
        return None
    if (body.get("tools") or []) != prefix["tools"]:
        return None
    kwargs = body.get("chat_template_kwargs") if isinstance(body.get("chat_template_kwargs"), dict) else {}
    return {**body, "messages": messages[1:] if has_system else messages,
            "chat_template_kwargs": {**kwargs, "render_tools": False}}
