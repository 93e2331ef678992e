"""A model that another OpenAI-compatible API serves (`serve.upstreams`): the ingress
forwards the requests that name it, as they came, and the API's answer goes back, and into
the log, like a local model's. This is how a hosted teacher (OpenAI, a NIM, vLLM on other
machines) produces the flywheel's training data while clients keep one endpoint.

It is a `ModelEngine` (serve/engine.py) that lives in the ingress: no Serve deployment,
no adapters. What is worth another try (a connection that failed, a 408, 409, 429 or 5xx)
is retried, `max_retries` times, after the wait the API asks for in `Retry-After` or else
an exponential backoff, as OpenAI's own client does, all within `timeout_s`. The API's own
error bodies pass through with their status; a timeout is a 504, and an unreachable API,
one that refuses our key or answers nonsense a 502, all OpenAI-style.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any

import httpx

from flywheel import telemetry
from flywheel.config import UpstreamConfig
from serve.engine import Endpoint
from serve.errors import error_body

logger = logging.getLogger("ray.serve")
PATHS = {"chat": "/chat/completions", "completion": "/completions"}
KNOWN_STATUSES = {status.value for status in HTTPStatus}  # an API's own codes (e.g. 529) become 502s
RETRIED_STATUSES = {408, 409, 429}  # and every 5xx
FIRST_BACKOFF_S, LONGEST_BACKOFF_S = 0.5, 8.0
LONGEST_RETRY_AFTER_S = 60.0  # an API asking for a longer wait gets the backoff instead


def retry_after(response: httpx.Response) -> float | None:
    """The wait the API asked for (`retry-after-ms`, as OpenAI sends it, or `Retry-After` in
    seconds or as an HTTP date), if it is a usable one."""
    headers = response.headers
    try:
        if (millis := headers.get("retry-after-ms")) is not None:
            wait = float(millis) / 1000
        elif (value := headers.get("retry-after")) is None:
            return None
        elif value.strip().replace(".", "", 1).isdigit():
            wait = float(value)
        else:
            wait = parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError, OverflowError):
        return None
    return wait if 0 <= wait <= LONGEST_RETRY_AFTER_S else None


def backoff(attempt: int, response: httpx.Response | None) -> float:
    """How long to wait before retry `attempt + 1` (0.5 s doubling to 8 s, jittered)."""
    asked = retry_after(response) if response is not None else None
    if asked is not None:
        return asked
    return min(FIRST_BACKOFF_S * 2**attempt, LONGEST_BACKOFF_S) * random.uniform(0.75, 1.0)


class UpstreamEngine:
    def __init__(self, config: UpstreamConfig):
        self.config = config
        self._headers = config.request_headers()
        self._client: httpx.AsyncClient | None = None  # made on first use, in the ingress's event loop

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.config.base_url, headers=self._headers, params=self.config.params,
                timeout=self.config.timeout_s,
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

    async def _send(self, endpoint: Endpoint, body: dict, stream: bool) -> httpx.Response | tuple[int, dict]:
        """The API's response (its body still to read when `stream`), once it is not worth
        another try or the retries are spent; a (status, error body) when no response came."""
        payload, deadline = self._payload(body, stream), time.monotonic() + self.config.timeout_s
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            request = self._http().build_request("POST", PATHS[endpoint], json=payload, timeout=max(left, 0.001))
            response = None
            try:
                response = await self._http().send(request, stream=stream)
            except httpx.TimeoutException as error:
                return self._failed(error)
            except httpx.TransportError as error:  # refused, reset, cut off: nothing was answered
                failed, reason = self._failed(error), type(error).__name__
            else:
                status = response.status_code
                if status not in RETRIED_STATUSES and status < 500:
                    return response
                reason = f"HTTP {status}"
            wait = backoff(attempt, response)
            if attempt == self.config.max_retries or time.monotonic() + wait >= deadline:
                return response if response is not None else failed
            if response is not None:
                await response.aclose()
            logger.warning("upstream %s: %s; retry %d of %d in %.2f s", self.config.name, reason, attempt + 1,
                           self.config.max_retries, wait)
            telemetry.upstream_retried(self.config.name, reason)
            await asyncio.sleep(wait)
            attempt += 1

    async def respond(self, endpoint: Endpoint, body: dict, adapter: str | None) -> tuple[int, dict]:
        if refused := self._refused(adapter):
            return refused
        response = await self._send(endpoint, body, stream=False)
        if isinstance(response, tuple):
            return response
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
        response = await self._send(endpoint, body, stream=True)
        if isinstance(response, tuple):
            yield response
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
