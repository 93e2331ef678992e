"""`serve.upstreams`: a model another OpenAI-compatible API serves, forwarded and logged by
the ingress. The API is a stand-in served over real HTTP (uvicorn, in a thread): a hosted
one (OpenAI, a NIM) cannot be reached from here. It answers like OpenAI, streams SSE, and
misbehaves on request: a 400 error body, an HTML 500, a slow answer, a status N times
before it answers ("flaky:N:STATUS:WAIT", WAIT the `retry-after-ms` it asks for)."""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import json
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.testclient import TestClient

from flywheel import telemetry
from flywheel.config import FlywheelConfig, LoggingConfig, RouteTarget, ServeConfig, UpstreamConfig
from flywheel.curation import prepare_in_process
from flywheel.examples import ExampleRules
from flywheel.routes import RouteBook, adapter_checker, seed_states
from flywheel.service import free_port
from flywheel.store import LogFilter, open_store
from serve.api import make_api
from serve.inference_log import InferenceLog
from serve.routing import RoutingTable
from serve.upstream import UpstreamEngine, backoff
from tests.unit.test_api import RecordingEngine, assert_openai_error

ANSWER = "Your order ORD-1 ships tomorrow."


def stand_in(seen: list) -> FastAPI:
    api = FastAPI()
    failed: dict[str, int] = {}

    @api.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        seen.append((request.headers, body, dict(request.query_params)))
        last = body["messages"][-1]["content"]
        if last.startswith("flaky:"):
            _, times, status, wait = last.split(":")
            if failed.setdefault(last, 0) < int(times):
                failed[last] += 1
                return JSONResponse({"error": {"message": f"try again ({failed[last]})", "type": "rate_limit"}},
                                    int(status), headers={"retry-after-ms": wait})
        if last == "refuse":
            return JSONResponse({"error": {"message": "unsupported value: 'temperature'", "type":
                                           "invalid_request_error", "param": "temperature", "code": None}}, 400)
        if last == "crash":
            return PlainTextResponse("<html>502 Bad Gateway</html>", 500)
        if last == "locked":
            return JSONResponse({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                           "param": None, "code": "invalid_api_key"}}, 401)
        if last == "swamped":
            return JSONResponse({"error": {"message": "Overloaded", "type": "overloaded_error"}}, 529)
        if last == "garble":
            return PlainTextResponse("not json", 200)
        if last == "dawdle":
            await asyncio.sleep(2)
        usage = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
        if body.get("stream"):
            def events():
                for piece in (ANSWER[:10], ANSWER[10:]):
                    delta = {"id": "c-1", "object": "chat.completion.chunk", "model": body["model"],
                             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    yield f"data: {json.dumps(delta)}\n\n"
                done = {"id": "c-1", "object": "chat.completion.chunk", "model": body["model"],
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
                yield f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")
        return {"id": "c-1", "object": "chat.completion", "created": 1, "model": body["model"], "usage": usage,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": ANSWER}}]}

    @api.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "gpt-up", "object": "model"}]}

    return api


@pytest.fixture(scope="module")
def hosted():
    """The stand-in API's base URL, and the (headers, body, query) of every request it got."""
    seen: list = []
    server = uvicorn.Server(uvicorn.Config(stand_in(seen), host="127.0.0.1", port=free_port(), log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}/v1", seen
    server.should_exit = server.force_exit = True  # a client's idle keep-alive connection need not be waited for
    thread.join(10)


def service(tmp_path, upstream: UpstreamConfig, logged: list, audit_percent: float = 0.0) -> TestClient:
    config = ServeConfig(models=[{"name": "small", "source": "x"}], upstreams=[upstream],
                         aliases={"support": RouteTarget(base="small", teacher=upstream.name)})
    book = RouteBook(tmp_path / "routes.json", seed_states(config.aliases), "small",
                     adapter_checker(["small"], tmp_path))
    routing = RoutingTable(["small", upstream.name], book, tmp_path, audit_percent=audit_percent)
    engines = {"small": RecordingEngine(), upstream.name: UpstreamEngine(upstream)}
    return TestClient(make_api(config, routing, engines, store=None,
                               inference_log=InferenceLog(LoggingConfig(), logged.append)))


def ask(content: str, model: str = "hosted", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def test_a_hosted_teacher_answers_through_the_service_and_is_logged(hosted, tmp_path, monkeypatch):
    url, seen = hosted
    monkeypatch.setenv("HOSTED_KEY", "sk-test")
    logged: list = []
    with service(tmp_path, UpstreamConfig(name="hosted", base_url=url, model="gpt-up", api_key_env="HOSTED_KEY"),
                 logged) as client:
        answer = client.post("/v1/chat/completions", json=ask("where is ORD-1?", temperature=0))
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == ANSWER
        headers, sent, _ = seen[-1]
        assert headers["authorization"] == "Bearer sk-test" and sent["model"] == "gpt-up" and sent["temperature"] == 0
        through_alias = client.post("/v1/chat/completions", json=ask("and ORD-2?", model="support"))
        assert through_alias.status_code == 200 and through_alias.headers["x-flywheel-model"] == "hosted"

        streamed = client.post("/v1/chat/completions", json=ask("stream it", stream=True))
        assert streamed.status_code == 200 and seen[-1][1]["stream"] is True
        pieces = [json.loads(line[6:]) for line in streamed.text.splitlines()
                  if line.startswith("data: {")]
        assert "".join(p["choices"][0]["delta"].get("content", "") for p in pieces) == ANSWER
        assert "hosted" in [row["id"] for row in client.get("/v1/models").json()["data"]]
        health = client.get("/health").json()
        assert health == {"status": "ok", "models": {"small": "ok", "hosted": "ok"}}
    time.sleep(0.1)
    plain, alias, stream = logged[-3:]
    assert (plain.base_model, plain.adapter, plain.usage["total_tokens"]) == ("hosted", None, 19)
    assert plain.response["choices"][0]["message"]["content"] == ANSWER and plain.workload_id != "support"
    assert (alias.workload_id, alias.tags["role"]) == ("support", "teacher")  # training data for the alias
    assert stream.response["choices"][0]["message"]["content"] == ANSWER and stream.usage["total_tokens"] == 19

    # what the ingress logged is teacher data for curation: `curate.teacher_models: [hosted]` keeps it
    store = open_store(f"sqlite:///{tmp_path / 'logs.db'}")
    store.write_batch(logged)
    for teachers, kept in ((("hosted",), len(logged)), (("small",), 0)):
        reasons = prepare_in_process(store, LogFilter(), ExampleRules(teacher_models=teachers))["reason"].to_pylist()
        assert reasons.count("") == kept and reasons.count("not_teacher") == len(logged) - kept
    store.close()


def test_a_hosted_teacher_audits_a_local_student_and_its_audits_are_training_data(hosted, tmp_path):
    url, seen = hosted
    (tmp_path / "small" / "tuned").mkdir(parents=True)
    (tmp_path / "small" / "tuned" / "adapter_config.json").write_text("{}")
    logged: list = []
    with service(tmp_path, UpstreamConfig(name="hosted", base_url=url, model="gpt-up"), logged,
                 audit_percent=100) as client:
        RouteBook(tmp_path / "routes.json", seed_states({"support": RouteTarget(base="small", teacher="hosted")}),
                  "small", adapter_checker(["small"], tmp_path)).promote("support", "tuned")  # as `flywheel promote`
        answer = client.post("/v1/chat/completions", json=ask("where is ORD-3?", model="support"))
        assert answer.status_code == 200 and answer.headers["x-flywheel-model"] == "small:tuned"
        deadline = time.monotonic() + 5
        while len(logged) < 2 and time.monotonic() < deadline:  # the audit answers after the client's reply
            time.sleep(0.01)
    student, audit = logged
    assert seen[-1][1]["model"] == "gpt-up" and seen[-1][1]["messages"][-1]["content"] == "where is ORD-3?"
    assert (audit.base_model, audit.tags["role"], audit.tags["shadow_of"]) == ("hosted", "teacher", student.id)
    assert audit.response["choices"][0]["message"]["content"] == ANSWER
    store = open_store(f"sqlite:///{tmp_path / 'logs.db'}")
    store.write_batch(logged)
    kept = prepare_in_process(store, LogFilter(), ExampleRules(teacher_models=("hosted",)))
    assert dict(zip(kept["id"].to_pylist(), kept["reason"].to_pylist(), strict=True)) == {
        student.id: "not_teacher", audit.id: ""}
    store.close()


def test_the_apis_failures_come_back_as_openai_errors(hosted, tmp_path):
    url, _ = hosted
    logged: list = []
    with service(tmp_path, UpstreamConfig(name="hosted", base_url=url, timeout_s=0.5, max_retries=0),
                 logged) as client:
        refused = client.post("/v1/chat/completions", json=ask("refuse"))  # the API's own error, as it sent it
        assert refused.status_code == 400 and refused.json()["error"] == {
            "message": "unsupported value: 'temperature'", "type": "invalid_request_error", "param": "temperature",
            "code": None}
        crashed = assert_openai_error(client.post("/v1/chat/completions", json=ask("crash")), 500)
        assert "502 Bad Gateway" in crashed["message"]
        locked = assert_openai_error(client.post("/v1/chat/completions", json=ask("locked")), 502)  # ours to fix
        assert "refused the configured key (HTTP 401" in locked["message"] and "Incorrect API key" in locked["message"]
        for odd in ("swamped", "garble"):  # HTTP 529; a 200 that is not JSON
            assert "no usable response" in assert_openai_error(client.post("/v1/chat/completions", json=ask(odd)),
                                                               502)["message"]
        slow = assert_openai_error(client.post("/v1/chat/completions", json=ask("dawdle")), 504)
        assert "did not answer within 0.5 s" in slow["message"]
        slow_stream = assert_openai_error(client.post("/v1/chat/completions", json=ask("dawdle", stream=True)), 504)
        assert "0.5 s" in slow_stream["message"]
        no_adapters = assert_openai_error(client.post("/v1/chat/completions", json=ask("hi", model="hosted:x")), 404)
        assert "hosted" in no_adapters["message"]
    assert [record.status for record in logged] == ["error"] * len(logged) and len(logged) >= 4

    with service(tmp_path, UpstreamConfig(name="hosted", base_url=f"http://127.0.0.1:{free_port()}/v1"),
                 []) as client:
        began = time.monotonic()
        gone = assert_openai_error(client.post("/v1/chat/completions", json=ask("hi")), 502)
        assert "is unreachable" in gone["message"]
        assert time.monotonic() - began >= 0.75 * (0.5 + 1.0)  # tried three times, backing off in between
        health = client.get("/health")  # another API being down does not make this service unhealthy
        assert health.status_code == 200 and health.json()["models"]["hosted"].startswith("unavailable")


def test_config_checks_upstream_names_and_routes(tmp_path):
    upstream = {"name": "hosted", "base_url": "https://api.example.com/v1/"}
    config = FlywheelConfig.model_validate({"home": str(tmp_path), "serve": {
        "models": [{"name": "small", "source": "x"}], "upstreams": [upstream],
        "aliases": {"support": {"base": "small", "teacher": "hosted"}, "direct": {"base": "hosted"}}}})
    assert config.serve.upstreams[0].base_url == "https://api.example.com/v1"
    for bad, message in ((dict(upstream, name="small"), "must be unique"),
                         (dict(upstream, base_url="api.example.com"), r"not an http\(s\) URL")):
        with pytest.raises(ValueError, match=message):
            ServeConfig(models=[{"name": "small", "source": "x"}], upstreams=[bad])
    with pytest.raises(ValueError, match="aliases.tuned.base"):  # adapters live on served models only
        ServeConfig(models=[{"name": "small", "source": "x"}], upstreams=[upstream],
                    aliases={"tuned": RouteTarget(base="hosted", adapter="a")})


def test_an_api_that_wants_its_key_elsewhere_and_extra_headers_and_parameters_gets_them(hosted, tmp_path,
                                                                                       monkeypatch):
    """Azure OpenAI's way: the key in `api-key`, the version a query parameter; and a
    header every request carries (OpenAI's project, a gateway's route)."""
    url, seen = hosted
    monkeypatch.setenv("AZURE_KEY", "az-123")
    upstream = UpstreamConfig(name="hosted", base_url=url, api_key_env="AZURE_KEY", api_key_header="api-key",
                              headers={"OpenAI-Project": "proj_1"}, params={"api-version": "2024-10-21"})
    with service(tmp_path, upstream, []) as client:
        for stream in (False, True):
            assert client.post("/v1/chat/completions", json=ask("hi", stream=stream)).status_code == 200
            headers, _, query = seen[-1]
            assert (headers["api-key"], headers["openai-project"], query) == ("az-123", "proj_1",
                                                                              {"api-version": "2024-10-21"})
            assert "authorization" not in headers


def test_what_is_worth_another_try_is_retried_within_the_deadline(hosted, tmp_path, monkeypatch):
    """A 429 or 5xx is retried after the wait the API asks for; once the retries are spent
    the API's answer goes back as it was; a timeout is not retried, and neither is a wait
    that would end past `timeout_s`."""
    url, seen = hosted
    before = len(seen)  # the stand-in serves the whole module
    retried = []
    monkeypatch.setattr(telemetry, "upstream_retried", lambda model, reason: retried.append((model, reason)))

    def tries(content: str) -> int:
        return sum(body["messages"][-1]["content"] == content for _, body, _ in seen[before:])

    logged: list = []
    with service(tmp_path, UpstreamConfig(name="hosted", base_url=url, timeout_s=1.5), logged) as client:
        answered = client.post("/v1/chat/completions", json=ask("flaky:2:429:20"))
        assert answered.status_code == 200 and tries("flaky:2:429:20") == 3
        streamed = client.post("/v1/chat/completions", json=ask("flaky:1:503:0", stream=True))
        assert streamed.status_code == 200 and ANSWER[:10] in streamed.text and tries("flaky:1:503:0") == 2
        spent = client.post("/v1/chat/completions", json=ask("flaky:5:502:0"))  # the API's body, as it sent it
        assert spent.status_code == 502 and spent.json()["error"]["message"] == "try again (3)"
        assert tries("flaky:5:502:0") == 3  # max_retries 2
        assert client.post("/v1/chat/completions", json=ask("flaky:1:400:0")).status_code == 400  # the client's to fix
        assert tries("flaky:1:400:0") == 1
        began = time.monotonic()
        late = client.post("/v1/chat/completions", json=ask("flaky:1:429:30000"))  # 30 s: past the deadline
        assert late.status_code == 429 and tries("flaky:1:429:30000") == 1 and time.monotonic() - began < 1.5
        slow = assert_openai_error(client.post("/v1/chat/completions", json=ask("dawdle")), 504)
        assert "1.5 s" in slow["message"] and tries("dawdle") == 1
    assert [record.status for record in logged] == ["ok", "ok", "error", "error", "error", "error"]
    assert [reason for _, reason in retried] == ["HTTP 429"] * 2 + ["HTTP 503"] + ["HTTP 502"] * 2

    with service(tmp_path, UpstreamConfig(name="hosted", base_url=url, max_retries=0), []) as client:
        limited = client.post("/v1/chat/completions", json=ask("flaky:1:429:0"))
        assert limited.status_code == 429 and limited.headers["retry-after"] == "1"  # the client's own retry waits


@pytest.mark.parametrize(("headers", "low", "high"), [
    ({"retry-after-ms": "250"}, 0.25, 0.25),
    ({"retry-after": "3"}, 3.0, 3.0),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.375, 0.5),  # in the past: the backoff
    ({"retry-after": "600"}, 0.375, 0.5),  # longer than 60 s: the backoff
    ({"retry-after": "soon"}, 0.375, 0.5),
    ({}, 0.375, 0.5),
])
def test_the_wait_before_a_retry_is_the_apis_or_a_jittered_backoff(headers, low, high):
    wait = backoff(0, httpx.Response(429, headers=headers))
    assert low <= wait <= high
    assert 6.0 <= backoff(5, None) <= 8.0  # doubling, capped at 8 s
    future = email.utils.format_datetime(datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=20),
                                         usegmt=True)
    assert 15 <= backoff(0, httpx.Response(503, headers={"retry-after": future})) <= 20
