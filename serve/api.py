"""The HTTP surface: OpenAI routes in front of one `ModelEngine` per base model.

This module owns what is ours — body limits, API keys, routing a `model` name to a base
and adapter (and, for an alias in shadow mode or a student's audited request, a second
model answering in the background; for a student that fails, the teacher answering
instead), the admin endpoints that move aliases, health, and turning every failure into
OpenAI error JSON — and forwards the request body to the engine, where vLLM's
OpenAI layer does the rest. Engines are injected: Ray Serve handles in production
(`serve/app.py`), plain objects in unit tests.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from flywheel import telemetry
from flywheel.config import WORKLOAD_MAX_CHARS, ServeConfig, TurnConfig, workload_name_problem
from flywheel.doctor import Check
from flywheel.erasure import Erasure, erasure_filter
from flywheel.examples import correction_problem
from flywheel.gate import recent_decisions
from flywheel.records import Feedback
from flywheel.routes import RouteError, describe
from flywheel.savings import savings_report
from flywheel.store import LogFilter, LogStore
from flywheel.turns import RunBook, RunRecord, TurnBusy
from serve.assemble import StreamAssembler
from serve.engine import Endpoint, ModelEngine
from serve.errors import error_body, validation_error_body
from serve.inference_log import InferenceLog, Pending, requested_workload
from serve.routing import Dispatch, RoutingTable, UnknownModel
from serve.upstream import UpstreamEngine

logger = logging.getLogger("ray.serve")

HEALTH_TIMEOUT_S = 10.0
ROUTE_CHANGE_FIELDS = {"adapter", "rollback", "mode", "percent", "candidate", "reason"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.status, self.message, self.param), status_code=self.status)


def retry_hint(status: int) -> dict[str, str]:
    """`Retry-After` for a status a client should retry after a pause (OpenAI's clients
    wait that long); nothing for any other."""
    return {"Retry-After": "1"} if status in (429, 503) else {}


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


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def make_api(
    config: ServeConfig,
    routing: RoutingTable,
    engines: Mapping[str, ModelEngine],
    classify: Callable[[BaseException], tuple[int, str]] = classify_failure,
    store: Callable[[], LogStore] | None = None,
    inference_log: InferenceLog | None = None,
    runs: RunBook | None = None,
    decisions: Path | None = None,
    prices: TurnConfig | None = None,
    erase: Callable[[LogStore, LogFilter, bool, bool, bool], Erasure] | None = None,
    doctor: Callable[[], list[Check]] | None = None,
) -> FastAPI:
    """`store` opens the log store on first use (feedback); without one, /v1/feedback is 404.
    `inference_log` records every routed request (none when None; no shadow traffic then).
    `runs` backs the /v1/flywheel/runs endpoints, `decisions` (the gate's folder)
    /v1/flywheel/decisions, `prices` with `store` /v1/flywheel/savings, `erase` (store,
    filter, dry run, keep datasets: `flywheel.erasure.erase` with the config) with
    `store` /v1/flywheel/erasures, `doctor` (`flywheel.doctor.run_checks` with the config)
    /v1/flywheel/doctor (each absent when None).
    `config.admin_token` / `config.api_keys` are used as given: the app builder resolves
    the environment variables."""
    app = FastAPI(title="Flywheel", description="OpenAI-compatible API with LoRA adapters by name")
    timeout = config.request_timeout_s
    fallback_after = config.fallback_after_s or timeout / 2
    opened: list[LogStore] = []
    shadows: set[asyncio.Task] = set()  # running shadow requests (referenced until done)
    reserved = [0]  # shadow runs promised to requests still being answered, or running

    def authorized(request: Request) -> None:
        """Inference endpoints: any configured API key (OpenAI answers 401 for a bad key too)."""
        if not config.api_keys:
            return
        token = _bearer(request)
        if token is None:
            raise ApiError(401, "missing API key: send `Authorization: Bearer <key>`")
        if not any(hmac.compare_digest(token, key) for key in config.api_keys):
            raise ApiError(401, "invalid API key")

    def admin(request: Request, *params: str) -> None:
        """The admin token, then the query: a parameter the endpoint does not take (its
        `params`) is refused, not ignored, so `?client=bob` for `client_id` cannot hand an
        access request every client's records."""
        if not config.admin_token:
            raise ApiError(403, "admin endpoints are disabled: set serve.admin_token or $FLYWHEEL_ADMIN_TOKEN")
        token = _bearer(request)
        if token is None:
            raise ApiError(401, "missing admin token: send `Authorization: Bearer <admin token>`")
        if not hmac.compare_digest(token, config.admin_token):
            raise ApiError(403, "wrong admin token")
        if unknown := sorted(set(request.query_params) - set(params)):
            raise ApiError(400, f"unknown query parameter(s) {', '.join(unknown)}; "
                           + (f"use {', '.join(params)}" if params else "this endpoint takes none"), unknown[0])

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(error.status_code, str(error.detail)), status_code=error.status_code)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return error.response()

    def dispatch_of(body: dict) -> Dispatch:
        try:
            return routing.dispatch(body)
        except UnknownModel as error:
            raise ApiError(404, str(error), "model") from None

    def failure(error: BaseException, pending: Pending | None) -> JSONResponse:
        """The error response for a failed forward, logged as an errored inference too."""
        status, message = classify(error)
        if pending:
            inference_log.finish(pending, status, error=message)
        if status >= 500 and status not in (503, 504):
            logger.exception("request failed", exc_info=error)
        return JSONResponse(error_body(status, message), status_code=status, headers=retry_hint(status))

    def begin_shadow(request: Request, original: dict, dispatch: Dispatch, primary: Pending | None) -> Pending | None:
        """Reserve a shadow run for this request (None when there is no room or no log to
        link it in); the primary's record and the shadow's name each other."""
        if dispatch.shadow is None or primary is None:
            return None
        if reserved[0] >= config.shadow_max_in_flight:
            telemetry.shadow_skipped(dispatch.alias, dispatch.shadow_role)
            return None
        tags = {**dispatch.tags(), "role": dispatch.shadow_role, "shadow_of": primary.id}
        pending = inference_log.begin(request.headers, original, dispatch.shadow[0], tags, dispatch.alias, force=True)
        if pending is not None:
            primary.tags["shadow"] = pending.id
            reserved[0] += 1
        return pending

    def run_shadow(endpoint: Endpoint, dispatch: Dispatch, pending: Pending | None, primary_ok: bool) -> None:
        if pending is None:
            return
        if not primary_ok:  # nothing to compare with
            reserved[0] -= 1
            return
        route, body = dispatch.shadow
        body = {**body, "stream": False}
        body.pop("stream_options", None)

        async def answer() -> None:
            try:
                status, payload = await asyncio.wait_for(engines[route.base].respond(endpoint, body, route.adapter),
                                                         timeout)
            except Exception as error:
                status, message = classify(error)
                inference_log.finish(pending, status, error=message)
                return
            inference_log.finish(pending, status, {**payload, "id": pending.id} if status == 200 else payload)

        def done(task: asyncio.Task) -> None:
            shadows.discard(task)
            reserved[0] -= 1

        task = asyncio.get_running_loop().create_task(answer())
        shadows.add(task)
        task.add_done_callback(done)

    async def forward(endpoint: Endpoint, request: Request) -> Response:
        authorized(request)
        deadline = time.monotonic() + timeout  # the client's whole wait, a fallback to the teacher included
        original = await read_body(request, config.max_body_bytes)
        named = requested_workload(request.headers, original)
        if named is not None and (problem := workload_name_problem(named)):  # it names folders and turns
            raise ApiError(400, f"workload id {named[:WORKLOAD_MAX_CHARS]!r} (X-Workload-Id or metadata.workload_id): "
                           f"{problem}", "workload_id")
        return await answer(endpoint, request, original, dispatch_of(original), deadline)

    async def hand_over(endpoint: Endpoint, request: Request, original: dict, dispatch: Dispatch, deadline: float,
                        pending: Pending | None, status: int, message: str | None = None,
                        payload: dict | None = None) -> Response:
        """A student or candidate failed an alias's request: log its failure, and the
        teacher answers instead (what failed is in the teacher's record's `route_note`)."""
        if pending:
            inference_log.finish(pending, status, payload, error=message)
        logger.warning("%s failed a request to %s (HTTP %s); the teacher answers it", dispatch.route.name,
                       dispatch.alias, status)
        telemetry.fell_back(dispatch.alias, dispatch.role)
        note = f"{dispatch.role} {dispatch.route.name} failed with HTTP {status}" + (
            f" (log {pending.id})" if pending else "")
        fallback = replace(dispatch.fallback, note=note, fallback_of=pending.id if pending else None)
        return await answer(endpoint, request, original, fallback, deadline)

    async def answer(endpoint: Endpoint, request: Request, original: dict, dispatch: Dispatch,
                     deadline: float) -> Response:
        """Forward to what `dispatch` names. The engine's first word (the whole answer, or a
        stream's head) decides: an error goes to the client or, from an alias's student or
        candidate, to the teacher instead (`hand_over`); a stream that started is relayed,
        and a failure after that can only be reported in-band. The first word must come
        before `deadline`; a student with a teacher to fall back on gets `fallback_after_s`
        of that wait at most, so the teacher has the rest."""
        route, body = dispatch.route, dispatch.body
        engine = engines[route.base]
        headers = {"X-Flywheel-Model": route.name}
        pending = None
        if inference_log:
            pending = inference_log.begin(request.headers, original, route, dispatch.tags(), dispatch.alias)
        shadow = begin_shadow(request, original, dispatch, pending)
        if pending:
            headers["X-Flywheel-Log-Id"] = pending.id
        streamed = body.get("stream") is True
        chunks = engine.stream(endpoint, body, route.adapter) if streamed else None
        wait = deadline - time.monotonic()
        if dispatch.fallback:
            wait = min(wait, fallback_after)
        try:
            status, payload = await asyncio.wait_for(
                anext(chunks) if streamed else engine.respond(endpoint, body, route.adapter), max(wait, 0))
        except Exception as error:
            run_shadow(endpoint, dispatch, shadow, False)
            if dispatch.fallback:
                return await hand_over(endpoint, request, original, dispatch, deadline, pending, *classify(error))
            return failure(error, pending)
        if status != 200:
            run_shadow(endpoint, dispatch, shadow, False)
            if dispatch.fallback:
                return await hand_over(endpoint, request, original, dispatch, deadline, pending, status,
                                       payload=payload)
            if pending:
                inference_log.finish(pending, status, payload)
            return JSONResponse(payload, status_code=status, headers=headers | retry_hint(status))
        if streamed:
            return relay_stream(endpoint, chunks, dispatch, headers, pending, shadow)
        if pending:
            payload = {**payload, "id": pending.id}
            inference_log.finish(pending, status, payload)
        run_shadow(endpoint, dispatch, shadow, True)
        return JSONResponse(payload, status_code=status, headers=headers)

    def relay_stream(endpoint: Endpoint, chunks: AsyncIterator[Any], dispatch: Dispatch, headers: dict,
                     pending: Pending | None, shadow: Pending | None) -> Response:
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
                    run_shadow(endpoint, dispatch, shadow, response is not None)

        return StreamingResponse(relay(), media_type="text/event-stream", headers=headers)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await forward("chat", request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await forward("completion", request)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        authorized(request)
        return {"object": "list", "data": routing.list_models()}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request) -> dict:
        authorized(request)
        try:
            routing.resolve(model)
        except UnknownModel as error:
            raise ApiError(404, str(error), "model") from None
        return next(row for row in routing.list_models() if row["id"] == model)

    @app.get("/v1/flywheel/routes")
    async def routes(request: Request) -> dict:
        admin(request)
        return await asyncio.to_thread(describe, routing.book)

    @app.post("/v1/flywheel/routes/{alias}")
    async def change_route(alias: str, request: Request) -> JSONResponse:
        """`{"adapter": ID}` promotes, `{"rollback": true}` rolls back, `{"mode": M,
        "percent": P, "candidate": ID}` sets the traffic mode; `reason` is recorded."""
        admin(request)
        body = await read_body(request, config.max_body_bytes, require_model=False)
        if set(body) - ROUTE_CHANGE_FIELDS:
            raise ApiError(400, f"unknown fields {sorted(set(body) - ROUTE_CHANGE_FIELDS)}; "
                                f"use {sorted(ROUTE_CHANGE_FIELDS)}")
        if not isinstance(body.get("rollback"), (bool, type(None))):
            raise ApiError(400, "`rollback` must be true", "rollback")
        actions = [key for key in ("adapter", "rollback", "mode") if body.get(key) not in (None, False)]
        if len(actions) != 1:
            raise ApiError(400, "give exactly one of `adapter` (promote), `rollback: true` or `mode`")
        for key in ("adapter", "mode", "candidate", "reason"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise ApiError(400, f"`{key}` must be a string", key)
        percent = body.get("percent")
        if percent is not None and (isinstance(percent, bool) or not isinstance(percent, (int, float))):
            raise ApiError(400, "`percent` must be a number from 0 to 100", "percent")
        reason = body.get("reason") or "admin endpoint"
        book = routing.book
        try:
            if actions == ["adapter"]:
                state = await asyncio.to_thread(book.promote, alias, body["adapter"], reason)
            elif actions == ["rollback"]:
                state = await asyncio.to_thread(book.rollback, alias, reason)
            else:
                state = await asyncio.to_thread(book.set_mode, alias, body["mode"], percent, body.get("candidate"),
                                                reason)
        except RouteError as error:
            raise ApiError(error.status, str(error)) from None
        return JSONResponse({"alias": alias, "action": actions[0], "route": state.model_dump(mode="json")})

    if runs is not None:

        def run_of(run_id: str) -> RunRecord:
            try:
                record = runs.get(run_id)
            except ValueError as error:
                raise ApiError(400, str(error)) from None
            if record is None:
                raise ApiError(404, f"no run {run_id!r}")
            return record

        @app.get("/v1/flywheel/runs")
        async def list_runs(request: Request, workload: str | None = None) -> dict:
            admin(request, "workload")
            return {"runs": [record.summary() for record in await asyncio.to_thread(runs.list, workload)]}

        @app.get("/v1/flywheel/runs/{run_id}")
        async def get_run(run_id: str, request: Request) -> dict:
            admin(request)
            return (await asyncio.to_thread(run_of, run_id)).summary()

        @app.post("/v1/flywheel/runs")
        async def create_run(request: Request) -> JSONResponse:
            """Queue a turn `{"workload": W, "max_steps"?: N, "eval_limit"?: N}`; the watcher
            (`flywheel watch`, or `turn.watch_in_service`) starts it."""
            admin(request)
            body = await read_body(request, config.max_body_bytes, require_model=False)
            if set(body) - {"workload", "max_steps", "eval_limit"}:
                raise ApiError(400, "use only `workload`, `max_steps` and `eval_limit`")
            if not isinstance(body.get("workload"), str) or not body["workload"]:
                raise ApiError(400, "`workload` is required and must be a string", "workload")
            for key in ("max_steps", "eval_limit"):
                value = body.get(key)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                    raise ApiError(400, f"`{key}` must be a positive integer", key)
            options = {key: body[key] for key in ("max_steps", "eval_limit") if body.get(key)}
            try:
                record = await asyncio.to_thread(runs.create, body["workload"], options)
            except ValueError as error:
                raise ApiError(400, str(error), "workload") from None
            return JSONResponse(record.summary(), status_code=202)

        @app.post("/v1/flywheel/runs/{run_id}/cancel")
        async def cancel_run(run_id: str, request: Request) -> dict:
            admin(request)
            run_of(run_id)
            return (await asyncio.to_thread(runs.cancel, run_id)).summary()

    if decisions is not None:

        @app.get("/v1/flywheel/decisions")
        async def list_gate_decisions(request: Request, alias: str | None = None, limit: str = "20") -> dict:
            """Recorded gate decisions, newest first: turns' gates and shadow-trial verdicts."""
            admin(request, "alias", "limit")
            if not limit.isdigit() or not 1 <= int(limit) <= 1000:
                raise ApiError(400, "`limit` must be an integer from 1 to 1000", "limit")
            try:
                return {"decisions": await asyncio.to_thread(recent_decisions, decisions, alias, int(limit))}
            except ValueError as error:
                raise ApiError(400, str(error), "alias") from None

    if store is not None:

        async def log_store() -> LogStore:
            if not opened:
                opened.append(await asyncio.to_thread(store))
            return opened[0]

        @app.post("/v1/feedback")
        async def feedback(request: Request) -> JSONResponse:
            """Attach {rating, comment, correction} to the logged inference `log_id`."""
            authorized(request)
            body = await read_body(request, config.max_body_bytes, require_model=False)
            log_id = body.pop("log_id", None)
            if not isinstance(log_id, str) or not log_id:
                raise ApiError(400, "`log_id` is required and must be a string", "log_id")
            try:
                verdict = Feedback.model_validate(body)
            except ValidationError as error:
                return JSONResponse(validation_error_body(error), status_code=400)
            if verdict.correction is not None and (problem := correction_problem(verdict.correction)):
                raise ApiError(400, f"correction: {problem}", "correction")
            if not await asyncio.to_thread((await log_store()).add_feedback, log_id, verdict):
                raise ApiError(404, f"no logged inference with id {log_id!r}", "log_id")
            return JSONResponse({"log_id": log_id, "status": "recorded"})

        @app.get("/v1/flywheel/logs")
        async def logs(request: Request, workload_id: str | None = None, client_id: str | None = None,
                       model: str | None = None, status: str | None = None, limit: str = "100",
                       order: str = "desc", after: str | None = None) -> dict:
            """Logged inferences, newest first (`order=asc`: oldest first), `limit` a page;
            `after`: the previous page's `next`. What the store holds about a client or, by
            `contains` (repeat it for any of several texts), a person (an access request),
            before or instead of erasing it."""
            admin(request, "workload_id", "client_id", "model", "status", "contains", "limit", "order", "after")
            if not limit.isdigit() or not 1 <= int(limit) <= 1000:
                raise ApiError(400, "`limit` must be an integer from 1 to 1000", "limit")
            if order not in ("asc", "desc"):
                raise ApiError(400, "`order` must be asc or desc", "order")
            if status not in (None, "ok", "error"):
                raise ApiError(400, "`status` must be ok or error", "status")
            named = {"workload_id": workload_id, "client_id": client_id, "model": model}
            texts = request.query_params.getlist("contains")
            given = [*named.items(), *(("contains", text) for text in texts)]
            if empty := [key for key, value in given if value == ""]:
                raise ApiError(400, f"`{empty[0]}` must not be empty", empty[0])
            chosen = LogFilter(status=status, contains=tuple(texts) or None, **named)
            try:
                page = await asyncio.to_thread((await log_store()).query, chosen, order, int(limit), after)
            except ValueError:  # a cursor this endpoint did not hand out
                raise ApiError(400, "`after` must be the `next` of an earlier page", "after") from None
            return {"object": "list", "data": [record.model_dump(mode="json") for record in page.records],
                    "next": page.cursor}

        @app.get("/v1/flywheel/logs/{log_id}")
        async def log_record(request: Request, log_id: str) -> dict:
            """One logged inference by the id its answer carried (`X-Flywheel-Log-Id`)."""
            admin(request)
            found = await asyncio.to_thread((await log_store()).get, log_id)
            if found is None:
                raise ApiError(404, f"no logged inference with id {log_id!r}", "log_id")
            return found.model_dump(mode="json")

    if store is not None and prices is not None:

        @app.get("/v1/flywheel/savings")
        async def savings(request: Request, workload: str | None = None, days: str | None = None) -> dict:
            """What students saved, measured from the logs (flywheel/savings.py); `days`: only
            the last D days."""
            admin(request, "workload", "days")
            try:
                window = None if days is None else float(days)
            except ValueError:
                window = -1.0
            if window is not None and not (0 <= window < math.inf):
                raise ApiError(400, "`days` must be a number of days >= 0", "days")
            since = None if window is None else time.time() - window * 86400
            return await asyncio.to_thread(savings_report, await log_store(), prices, config.price_list(),
                                           workload=workload, since=since)

    if store is not None and erase is not None:

        @app.post("/v1/flywheel/erasures")
        async def erasure(request: Request) -> JSONResponse:
            """`flywheel logs delete` over HTTP: `{"client_id"?, "workload_id"?, "model"?,
            "contains"? (a text, or a list: any of them), "older_than_days"?, "dry_run": true,
            "keep_datasets": false, "retire_adapters": false}`.
            It counts unless `dry_run` is false; then it deletes the records and their rows in
            curated datasets (and retires the adapters trained on those rows)."""
            admin(request)
            body = await read_body(request, config.max_body_bytes, require_model=False)
            names, flags = ("workload_id", "client_id", "model"), ("dry_run", "keep_datasets", "retire_adapters")
            if unknown := sorted(set(body) - {*names, "contains", "older_than_days", *flags}):
                raise ApiError(400, f"unknown field(s) {', '.join(unknown)}; use {', '.join(names)}, contains, "
                               f"older_than_days, {', '.join(flags)}", unknown[0])
            for key in names:
                if key in body and (not isinstance(body[key], str) or not body[key]):
                    raise ApiError(400, f"`{key}` must be a non-empty string", key)
            texts = body.get("contains")
            if texts is not None and not (isinstance(texts, str) or isinstance(texts, list) and texts
                                          and all(isinstance(text, str) for text in texts)):
                raise ApiError(400, "`contains` must be a text or a non-empty list of texts", "contains")
            for key in flags:
                if key in body and not isinstance(body[key], bool):
                    raise ApiError(400, f"`{key}` must be true or false", key)
            age = body.get("older_than_days")
            if age is not None and (isinstance(age, bool) or not isinstance(age, int | float) or not 0 <= age < math.inf):
                raise ApiError(400, "`older_than_days` must be a number of days >= 0", "older_than_days")
            try:
                chosen = erasure_filter(**{key: body.get(key) for key in names}, older_than_days=age, contains=texts)
            except ValueError as error:
                raise ApiError(400, str(error)) from None
            dry_run = body.get("dry_run", True)
            try:
                done = await asyncio.to_thread(erase, await log_store(), chosen, dry_run,
                                               body.get("keep_datasets", False), body.get("retire_adapters", False))
            except TurnBusy as busy:
                raise ApiError(409, f"{busy}: its curation could copy these records again; retry once it ends") \
                    from None
            criteria = {key: body[key] for key in (*names, "contains", "older_than_days") if body.get(key) is not None}
            return JSONResponse({**done.model_dump(), "dry_run": dry_run, "filter": criteria})

        @app.get("/v1/flywheel/erasures")
        async def erasures(request: Request) -> dict:
            """The erasures the store remembers (`flywheel logs erasures`), oldest first."""
            admin(request)
            found = await asyncio.to_thread((await log_store()).tombstones)
            return {"object": "list", "data": [tombstone.describe() for tombstone in found]}

    if doctor is not None:

        @app.get("/v1/flywheel/doctor")
        async def checks(request: Request) -> dict:
            """`flywheel doctor` as this replica sees it: its node's models, spool, disk and
            environment (hosted APIs' keys), and the Ray cluster it runs in."""
            admin(request)
            found = await asyncio.to_thread(doctor)
            return {"ok": all(check.status != "fail" for check in found), "node": socket.gethostname(),
                    "checks": [check.as_dict() for check in found]}

    @app.get("/health")
    async def health() -> JSONResponse:
        async def probe(engine: ModelEngine) -> str:
            try:
                await asyncio.wait_for(engine.check_health(), HEALTH_TIMEOUT_S)
                return "ok"
            except Exception as error:
                return f"unavailable: {classify(error)[1]}"

        states = dict(zip(engines, await asyncio.gather(*(probe(e) for e in engines.values()))))
        # another company's API being down is reported, but does not make this service unhealthy
        ok = all(state == "ok" for name, state in states.items() if not isinstance(engines[name], UpstreamEngine))
        return JSONResponse({"status": "ok" if ok else "unavailable", "models": states},
                            status_code=200 if ok else 503)

    return app
