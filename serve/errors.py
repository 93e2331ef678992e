"""OpenAI-style error bodies, shaped like vLLM's own `ErrorResponse` so every error the
service returns — ours or vLLM's — looks the same to a client."""

from __future__ import annotations

from http import HTTPStatus


def error_type(status: int) -> str:
    """`BadRequestError`, `NotFoundError`, ... as vLLM and the OpenAI SDK name them."""
    phrase = HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    return phrase if phrase.endswith("Error") else f"{phrase}Error"


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": status}}
