"""A model that another OpenAI-compatible API serves (`serve.upstreams`): the ingress
forwards the requests that name it, as they came, and the API's answer goes back, and into
the log, like a local model's. This is how a hosted teacher (OpenAI, a NIM, vLLM on other
machines) produces the flywheel's training data while clients keep one endpoint.

It is a `ModelEngine` (serve/engine.py) that lives in the ingress: no Serve deployment,
no adapters. The API's own error bodies pass through with their status; a timeout is a
504, and an unreachable API, one that refuses our key or answers nonsense a 502, all
OpenAI-style.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import httpx

from flywheel.config import UpstreamConfig
from serve.engine import Endpoint
from serve.errors import error_body

logger = logging.getLogger("ray.serve")
PATHS = {"chat": "/chat/completions", "completion": "/completions"}
KNOWN_STATUSES = {status.value for status in HTTPStatus}  # an API's own codes (e.g. 529) become 502s


class UpstreamEngine:
    def __init__(self, config: UpstreamConfig):
        self.config = config
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client: httpx.AsyncClient | None = None  # made on first use, in the ingress's event loop

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.config.base_url, headers=self._headers, timeout=self.config.timeout_s,
                limits=httpx.Limits(max_connections=self.config.max_connections))
        return self._client

    def _payload(self, body: dict, stream: bool) -> dict[str, Any]:
        return {**body, "model": self.config.model or self.config.name, "stream": stream}

    def _refused(self, adapter: str | None) -> tuple[int, dict] | None:
        if adapter is None:
            return None
        return 404, error_body(404, f"model {self.config.name!r} is served by {self.config.base_url}: it has no "
                               f"adapters (asked for {adapter!r})", "model")

    def _failed(self, error: httpx.HTTPError) -> tuple[int, dict]:
        if isinstance(error, httpx.TimeoutException):
            return 504, error_body(504, f"{self.config.name}: {self.config.base_url} did not answer within "
                                   f"{self.config.timeout_s:g} s")
        return 502, error_body(502, f"{self.config.name}: {self.config.base_url} is unreachable "
                               f"({type(error).__name__}: {error})")

    def _error(self, status: int, text: str) -> tuple[int, dict]:
        """The API's error as it sent it, when it is OpenAI-shaped and the client's to fix or
        wait out; a 502 when the fault is ours (the API refused our key) or the API's answer
        is not one a client could use."""
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        shaped = isinstance(body, dict) and isinstance(body.get("error"), dict)
        said = body["error"].get("message") if shaped else text[:300]
        if status in (401, 403):
            return 502, error_body(502, f"{self.config.name}: {self.config.base_url} refused the configured key "
                                   f"(HTTP {status}; check {self.config.api_key_env or 'serve.upstreams[].api_key_env'}): "
                                   f"{said}")
        if status < 400 or status not in KNOWN_STATUSES:
            return 502, error_body(502, f"{self.config.name}: {self.config.base_url} answered HTTP {status} with "
                                   f"no usable response: {said!r}")
        return (status, body) if shaped else (status, error_body(status, f"{self.config.name}: "
                                                                 f"{self.config.base_url} answered {status}: {said}"))

    async def respond(self, endpoint: Endpoint, body: dict, adapter: str | None) -> tuple[int, dict]:
        if refused := self._refused(adapter):
            return refused
        try:
            response = await self._http().post(PATHS[endpoint], json=self._payload(body, False))
        except httpx.HTTPError as error:
            return self._failed(error)
        if response.status_code == 200:
            try:
                return 200, response.json()
            except ValueError:
                pass
        return self._error(response.status_code, response.text)

    async def stream(self, endpoint: Endpoint, body: dict, adapter: str | None) -> AsyncIterator[Any]:
        """(status, error body or None) first, then the API's SSE events as they arrive."""
        if refused := self._refused(adapter):
            yield refused
            return
        request = self._http().build_request("POST", PATHS[endpoint], json=self._payload(body, True))
        try:
            response = await self._http().send(request, stream=True)
        except httpx.HTTPError as error:
            yield self._failed(error)
            return
        try:
            if response.status_code != 200:
                yield self._error(response.status_code, (await response.aread()).decode(errors="replace"))
                return
            yield 200, None
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    yield f"{line}\n\n"
        except httpx.HTTPError as error:  # the API went away mid-stream: tell the client in-band
            logger.warning("upstream %s failed mid-stream: %s", self.config.name, error)
            yield f"data: {json.dumps(self._failed(error)[1])}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            await response.aclose()

    async def check_health(self) -> None:
        """Raises when the API cannot be reached or answers its model list with a 5xx."""
        response = await self._http().get("/models", timeout=min(10.0, self.config.timeout_s))
        if response.status_code >= 500:
            raise RuntimeError(f"{self.config.base_url} answered GET /models with {response.status_code}")
