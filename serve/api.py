"""The HTTP surface: OpenAI routes in front of one `ModelEngine` per base model.

This module owns what is ours — body limits, routing a `model` name to a base and
adapter, health, and turning every failure into OpenAI error JSON — and forwards the
request body untouched to the engine, where vLLM's OpenAI layer does the rest.
Engines are injected: Ray Serve handles in production (`serve/app.py`), plain objects
in unit tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from flywheel.config import ServeConfig
from flywheel.records import Feedback
from flywheel.store import LogStore
from serve.assemble import StreamAssembler
from serve.engine import Endpoint, ModelEngine
from serve.errors import error_body, validation_error_body
from serve.inference_log import InferenceLog, Pending
from serve.routing import Route, RoutingTable, UnknownModel

logger = logging.getLogger("ray.serve")

HEALTH_TIMEOUT_S = 10.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.status, self.message, self.param), status_code=self.status)


def classify_failure(error: BaseException) -> tuple[int, str]:
    """Status and message for an exception raised while forwarding to an engine."""
    if isinstance(error, (asyncio.TimeoutError, TimeoutError)):
        return 504, "the model did not answer in time"
    return 500, f"internal error while serving the request: {type(error).__name__}"


async def read_body(request: Request, limit: int, require_model: bool = True) -> dict:
    """The request's JSON object, refusing oversized (413) and malformed (400) bodies."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is larger than the {limit}-byte limit")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ApiError(413, f"request body is larger than the {limit}-byte limit")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = body.get("model")
    if require_model and (not isinstance(model, str) or not model):
        raise ApiError(400, "`model` is required and must be a non-empty string", "model")
    return body


def make_api(
    config: ServeConfig,
    routing: RoutingTable,
    engines: Mapping[str, ModelEngine],
    classify: Callable[[BaseException], tuple[int, str]] = classify_failure,
    store: Callable[[], LogStore] | None = None,
    inference_log: InferenceLog | None = None,
) -> FastAPI:
    """`store` opens the log store on first use (feedback); without one, /v1/feedback is 404.
    `inference_log` records every routed request (none when None)."""
    app = FastAPI(title="Flywheel", description="OpenAI-compatible API with LoRA adapters by name")
    timeout = config.request_timeout_s
    opened: list[LogStore] = []

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(error.status_code, str(error.detail)), status_code=error.status_code)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return error.response()

    def route_of(body: dict) -> Route:
        try:
            return routing.resolve(body["model"])
        except UnknownModel as error:
            raise ApiError(404, str(error), "model") from None

    def failure(error: BaseException, pending: Pending | None) -> JSONResponse:
        """The error response for a failed forward, logged as an errored inference too."""
        status, message = classify(error)
        if pending:
            inference_log.finish(pending, status, error=message)
        if status >= 500 and status not in (503, 504):
            logger.exception("request failed", exc_info=error)
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        return JSONResponse(error_body(status, message), status_code=status, headers=headers)

    async def forward(endpoint: Endpoint, request: Request) -> Response:
        body = await read_body(request, config.max_body_bytes)
        route = route_of(body)
        engine = engines[route.base]
        headers = {"X-Flywheel-Model": route.name}
        pending = inference_log.begin(request.headers, body, route) if inference_log else None
        if pending:
            headers["X-Flywheel-Log-Id"] = pending.id
        if body.get("stream") is True:
            return await forward_stream(engine, endpoint, body, route, headers, pending)
        try:
            status, payload = await asyncio.wait_for(engine.respond(endpoint, body, route.adapter), timeout)
        except Exception as error:
            return failure(error, pending)
        if pending:
            if status == 200:
                payload = {**payload, "id": pending.id}
            inference_log.finish(pending, status, payload)
        return JSONResponse(payload, status_code=status, headers=headers)

    async def forward_stream(
        engine: ModelEngine, endpoint: Endpoint, body: dict, route: Route, headers: dict, pending: Pending | None
    ) -> Response:
        chunks = engine.stream(endpoint, body, route.adapter)
        try:
            status, error = await asyncio.wait_for(anext(chunks), timeout)
        except Exception as failed:
            return failure(failed, pending)
        if status != 200:
            if pending:
                inference_log.finish(pending, status, error)
            return JSONResponse(error, status_code=status, headers=headers)
        assembler = StreamAssembler(pending.id, endpoint) if pending else None

        async def relay() -> AsyncIterator[Any]:
            try:
                async for chunk in chunks:
                    yield assembler.rewrite(chunk) if assembler else chunk
            except Exception as failed:  # the replica went away mid-stream: say so in-band
                status, message = classify(failed)
                if assembler:
                    assembler.error = message
                yield f"data: {json.dumps(error_body(status, message))}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                if pending:
                    response = assembler.response()
                    inference_log.finish(pending, 200 if response else 500, response, error=assembler.error,
                                         first_token_at=assembler.first_token_at)

        return StreamingResponse(relay(), media_type="text/event-stream", headers=headers)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await forward("chat", request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await forward("completion", request)

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": routing.list_models()}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> dict:
        route_of({"model": model})
        return next(row for row in routing.list_models() if row["id"] == model)

    if store is not None:

        @app.post("/v1/feedback")
        async def feedback(request: Request) -> JSONResponse:
            """Attach {rating, comment, correction} to the logged inference `log_id`."""
            body = await read_body(request, config.max_body_bytes, require_model=False)
            log_id = body.pop("log_id", None)
            if not isinstance(log_id, str) or not log_id:
                raise ApiError(400, "`log_id` is required and must be a string", "log_id")
            try:
                verdict = Feedback.model_validate(body)
            except ValidationError as error:
                return JSONResponse(validation_error_body(error), status_code=400)
            if not opened:
                opened.append(await asyncio.to_thread(store))
            if not await asyncio.to_thread(opened[0].add_feedback, log_id, verdict):
                raise ApiError(404, f"no logged inference with id {log_id!r}", "log_id")
            return JSONResponse({"log_id": log_id, "status": "recorded"})

    @app.get("/health")
    async def health() -> JSONResponse:
        async def probe(engine: ModelEngine) -> str:
            try:
                await asyncio.wait_for(engine.check_health(), HEALTH_TIMEOUT_S)
                return "ok"
            except Exception as error:
                return f"unavailable: {classify(error)[1]}"

        states = dict(zip(engines, await asyncio.gather(*(probe(e) for e in engines.values()))))
        ok = all(state == "ok" for state in states.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "models": states},
                            status_code=200 if ok else 503)

    return app
