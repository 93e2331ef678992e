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


def validation_error_body(error) -> dict:
    """A 400 body for a pydantic `ValidationError`: the first problem, naming its field."""
    first = error.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    return error_body(400, f"{param}: {first['msg']}" if param else first["msg"], param)
