"""The HTTP layer on its own: limits, routing, error shapes, streaming relay.

The engine here is a recording stand-in, because this tier runs without Ray or vLLM;
the same routes against real vLLM replicas are covered in tests/integration.
"""

import asyncio
import json
import socket
import time
from functools import partial

import pytest
from fastapi.testclient import TestClient

from flywheel import telemetry
from flywheel.config import FlywheelConfig, LoggingConfig, RouteTarget, ServeConfig
from flywheel.datasets import write_dataset
from flywheel.doctor import Check
from flywheel.erasure import erase
from flywheel.gate import Decision, record_decision
from flywheel.records import LogRecord
from flywheel.routes import RouteBook, adapter_checker, seed_states
from flywheel.savings import savings_report
from flywheel.turns import RunBook
from serve.api import make_api
from serve.app import classify_serve_failure
from serve.errors import error_body
from serve.inference_log import InferenceLog
from serve.routing import RoutingTable
from tests.unit.test_savings import PRICES, traffic

CHAT = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}


def chunk(delta, finish=None):
    data = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "model": "small",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(data)}\n\n"


class RecordingEngine:
    def __init__(self):
        self.calls = []
        self.fail_with = None
        self.reply = (200, {"id": "chatcmpl-1", "object": "chat.completion", "choices": []})
        self.stream_head = (200, None)

    async def respond(self, endpoint, body, adapter):
        self.calls.append((endpoint, body, adapter))
        if self.fail_with:
            raise self.fail_with
        return self.reply

    async def stream(self, endpoint, body, adapter):
        self.calls.append((endpoint, body, adapter))
        yield self.stream_head
        if self.stream_head[0] == 200:
            yield chunk({"role": "assistant", "content": "Hel"})
            if self.fail_with:
                raise self.fail_with
            yield chunk({"content": "lo"}, finish="stop")
            yield "data: [DONE]\n\n"


    async def check_health(self):
        if self.fail_with:
            raise self.fail_with


@pytest.fixture
def engine():
    return RecordingEngine()


@pytest.fixture
def log_store(tmp_path):
    from flywheel.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'logs.db'}")
    yield store
    store.close()


@pytest.fixture
def logged():
    """Records the service hands to its log sink (LogWriter.submit in production)."""
    return []


@pytest.fixture
def logging_config():
    return LoggingConfig(exclude_workloads=["private"])


@pytest.fixture
def client(tmp_path, engine, log_store, logged, logging_config):
    adapter = tmp_path / "small" / "tuned"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    config = ServeConfig(
        models=[{"name": "small", "source": "x"}],
        aliases={"router": RouteTarget(base="small", adapter="tuned")},
        max_body_bytes=2_000,
        request_timeout_s=0.5,
    )
    routing = RoutingTable(["small"], RouteBook(tmp_path / "routes.json", seed_states(config.aliases), "small",
                                                adapter_checker(["small"], tmp_path)), tmp_path)
    return TestClient(make_api(config, routing, {"small": engine}, classify_serve_failure, store=lambda: log_store,
                               inference_log=InferenceLog(logging_config, logged.append)))


def assert_openai_error(response, status):
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status and error["message"] and error["type"].endswith("Error")
    return error


def test_chat_is_forwarded_with_route_and_body(client, engine):
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "router", "temperature": 0.3})
    assert response.status_code == 200
    assert response.headers["X-Flywheel-Model"] == "small:tuned"
    endpoint, body, adapter = engine.calls[0]
    assert (endpoint, adapter, body["temperature"]) == ("chat", "tuned", 0.3)


def test_completions_go_to_the_completion_endpoint(client, engine):
    assert client.post("/v1/completions", json={"model": "small:tuned", "prompt": "x"}).status_code == 200
    assert engine.calls[0][0] == "completion" and engine.calls[0][2] == "tuned"


def test_engine_errors_keep_their_status(client, engine):
    engine.reply = (400, {"error": {"message": "bad", "type": "BadRequestError", "param": None, "code": 400}})
    assert_openai_error(client.post("/v1/chat/completions", json=CHAT), 400)


@pytest.mark.parametrize(
    ("content", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (json.dumps({"messages": []}).encode(), 400, "model"),
        (json.dumps({**CHAT, "model": 7}).encode(), 400, "model"),
        (json.dumps({**CHAT, "model": "ghost"}).encode(), 404, "model"),
        (json.dumps({**CHAT, "model": "small:ghost"}).encode(), 404, "model"),
        (json.dumps({**CHAT, "pad": "x" * 3_000}).encode(), 413, None),
    ],
)
def test_bad_requests_get_openai_errors(client, engine, content, status, param):
    response = client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert assert_openai_error(response, status)["param"] == param
    assert engine.calls == []


def test_oversized_body_without_content_length_is_refused(client, engine):
    chunks = iter([b'{"model": "small", "x": "', b"y" * 1_500, b"z" * 1_500, b'"}'])
    response = client.post("/v1/chat/completions", content=chunks)
    assert_openai_error(response, 413)


def test_overload_and_unavailability_are_503_with_retry_after(client, engine):
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    for error in (BackPressureError(num_queued_requests=9, max_queued_requests=8),
                  DeploymentUnavailableError("model-small")):
        engine.fail_with = error
        response = client.post("/v1/chat/completions", json=CHAT)
        assert_openai_error(response, 503)
        assert response.headers["Retry-After"] == "1"


def test_engine_crash_is_500_and_timeout_is_504(client, engine):
    engine.fail_with = RuntimeError("boom")
    assert_openai_error(client.post("/v1/chat/completions", json=CHAT), 500)

    async def never(*_):
        await asyncio.sleep(10)

    engine.respond = never
    assert_openai_error(client.post("/v1/chat/completions", json=CHAT), 504)


def test_stream_is_relayed_as_server_sent_events(client):
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    contents = [json.loads(line[6:])["choices"][0]["delta"].get("content") for line in lines[:-1]]
    assert contents == ["Hel", "lo"] and lines[-1] == "data: [DONE]"


def test_stream_refused_before_first_token_is_a_plain_error(client, engine):
    engine.stream_head = (400, {"error": {"message": "no", "type": "BadRequestError", "param": None, "code": 400}})
    assert_openai_error(client.post("/v1/chat/completions", json={**CHAT, "stream": True}), 400)


def test_stream_broken_midway_ends_with_an_error_event(client, engine):
    from ray.serve.exceptions import DeploymentUnavailableError

    engine.fail_with = DeploymentUnavailableError("model-small")
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        events = [line for line in response.iter_lines() if line]
    assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == 503
    assert events[-1] == "data: [DONE]"


def test_models_lists_bases_adapters_and_aliases(client):
    ids = {row["id"] for row in client.get("/v1/models").json()["data"]}
    assert ids == {"small", "small:tuned", "router"}
    assert client.get("/v1/models/small:tuned").json()["parent"] == "small"
    assert_openai_error(client.get("/v1/models/ghost"), 404)


def test_health_reflects_the_engines(client, engine):
    assert client.get("/health").json() == {"status": "ok", "models": {"small": "ok"}}
    engine.fail_with = RuntimeError("engine dead")
    response = client.get("/health")
    assert response.status_code == 503 and response.json()["models"]["small"].startswith("unavailable")


def test_unknown_paths_and_methods_are_openai_errors(client):
    assert_openai_error(client.get("/v1/nothing"), 404)
    assert_openai_error(client.get("/v1/chat/completions"), 405)


def test_feedback_attaches_to_a_logged_inference(client, log_store):
    from flywheel.records import LogRecord

    record = LogRecord(workload_id="w", client_id="c", model="small", request=CHAT)
    log_store.write_batch([record])
    correction = {"role": "assistant", "content": "Your order ships today."}
    response = client.post("/v1/feedback", json={"log_id": record.id, "rating": -1, "comment": "vague",
                                                 "correction": correction})
    assert response.status_code == 200 and response.json()["status"] == "recorded"
    (feedback,) = log_store.get(record.id).feedback
    assert (feedback.rating, feedback.comment, feedback.correction) == (-1, "vague", correction)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"rating": 1}, 400, "log_id"),
        ({"log_id": "01JT6ZBHV8DPVX588PM7SQQQCE", "rating": 1}, 404, "log_id"),
        ({"log_id": "x", "rating": "great"}, 400, "rating"),
        ({"log_id": "x", "rating": 99}, 400, "rating"),
        ({"log_id": "x", "stars": 5}, 400, "stars"),
    ],
)
def test_bad_feedback_gets_openai_errors(client, body, status, param):
    assert assert_openai_error(client.post("/v1/feedback", json=body), status)["param"] == param


@pytest.mark.parametrize(("correction", "why"), [
    ({"role": "user", "content": "ships today"}, "must be the assistant's message"),
    ({"role": "assistant", "content": "  "}, "needs `content` or `tool_calls`"),
    ({"role": "assistant", "tool_calls": [{"function": {"name": "track", "arguments": "{not json"}}]},
     "not an OpenAI chat message"),
    ({"content": "no role"}, "not an OpenAI chat message"),
])
def test_a_correction_curation_could_not_learn_from_is_refused_and_nothing_is_recorded(client, log_store,
                                                                                      correction, why):
    """Curation would reject it, and with it the record's own answer, which it replaces."""
    from flywheel.records import LogRecord

    record = LogRecord(workload_id="w", client_id="c", model="small", request=CHAT)
    log_store.write_batch([record])
    error = assert_openai_error(client.post("/v1/feedback", json={"log_id": record.id, "correction": correction}), 400)
    assert error["param"] == "correction" and why in error["message"]
    assert log_store.get(record.id).feedback == []
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "track", "arguments": "{}"}}]}
    assert client.post("/v1/feedback", json={"log_id": record.id, "correction": call}).status_code == 200


def test_every_routed_request_is_logged_with_its_id_in_the_response(client, engine, logged):
    engine.reply = (200, {"id": "chatcmpl-1", "object": "chat.completion", "model": "small:tuned",
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                          "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
    response = client.post("/v1/chat/completions", headers={"X-Workload-Id": "support", "X-Client-Id": "web",
                                                            "Authorization": "Bearer sk-secret"},
                           json={**CHAT, "model": "router", "api_key": "sk-secret"})
    (record,) = logged
    assert response.headers["X-Flywheel-Log-Id"] == response.json()["id"] == record.id
    assert (record.workload_id, record.client_id, record.model) == ("support", "web", "router")
    assert (record.base_model, record.adapter, record.status) == ("small", "tuned", "ok")
    assert record.response["choices"][0]["message"]["content"] == "hi" and record.usage["total_tokens"] == 4
    assert record.latency_ms >= 0
    assert "sk-secret" not in record.model_dump_json()


@pytest.mark.parametrize(("headers", "metadata"), [({"X-Workload-Id": "../../etc"}, None),
                                                   ({}, {"workload_id": "support desk"}),
                                                   ({"X-Workload-Id": "w" * 101}, None)])
def test_a_workload_id_that_cannot_name_a_workload_is_refused_before_anything_runs(client, engine, logged,
                                                                                  headers, metadata):
    """A workload names dataset folders and turn records; one that cannot used to be logged,
    and then stopped the watcher's every tick."""
    engine.reply = (200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]})
    body = {**CHAT, "model": "router", **({"metadata": metadata} if metadata else {})}
    error = assert_openai_error(client.post("/v1/chat/completions", headers=headers, json=body), 400)
    assert error["param"] == "workload_id" and "(X-Workload-Id or metadata.workload_id)" in error["message"]
    assert logged == [] and engine.calls == []
    assert client.post("/v1/chat/completions", headers={"X-Workload-Id": "support-desk.v2"},
                       json={**CHAT, "model": "router"}).status_code == 200
    assert [record.workload_id for record in logged] == ["support-desk.v2"]


def test_streamed_responses_are_assembled_and_carry_the_log_id(client, logged):
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True,
                                                             "metadata": {"workload_id": "chat-ui"}}) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line and line != "data: [DONE]"]
        log_id = response.headers["X-Flywheel-Log-Id"]
    (record,) = logged
    assert record.id == log_id and {event["id"] for event in events} == {log_id}
    assert record.workload_id == "chat-ui" and record.client_id == "anonymous"
    message = record.response["choices"][0]
    assert message["message"]["content"] == "Hello" and message["finish_reason"] == "stop"
    assert record.ttft_ms is not None


def test_failures_are_logged_as_errors_and_opted_out_workloads_not_at_all(client, engine, logged):
    engine.reply = (400, {"error": {"message": "bad max_tokens", "type": "BadRequestError", "param": None,
                                    "code": 400}})
    client.post("/v1/chat/completions", json=CHAT)
    assert logged[-1].status == "error" and "bad max_tokens" in logged[-1].error and logged[-1].response is None
    response = client.post("/v1/chat/completions", headers={"X-Workload-Id": "private"}, json=CHAT)
    assert "X-Flywheel-Log-Id" not in response.headers and len(logged) == 1
    client.post("/v1/chat/completions", json={**CHAT, "model": "ghost"})  # unroutable: nothing to log
    assert len(logged) == 1


@pytest.mark.parametrize("logging_config", [LoggingConfig(sample_rate=0.0)])
def test_sampling_rate_zero_logs_nothing(client, logged):
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert logged == []


ADMIN = {"Authorization": "Bearer admin-s3cret"}


@pytest.fixture
def secured(tmp_path, engine, logged, log_store):
    return secured_api(tmp_path, engine, logged, log_store)


def secured_api(tmp_path, engine, logged, log_store, audit_percent=0.0, shadow_max_in_flight=4):
    """An API with an admin token, an API key, two adapters, a logging sink and a log store."""
    for name in ("tuned", "next"):
        (tmp_path / "small" / name).mkdir(parents=True)
        (tmp_path / "small" / name / "adapter_config.json").write_text("{}")
    config = ServeConfig(models=[{"name": "small", "source": "x"}], admin_token="admin-s3cret", api_keys=["key-1"],
                         aliases={"router": RouteTarget(base="small")}, shadow_max_in_flight=shadow_max_in_flight)
    book = RouteBook(tmp_path / "routes.json", seed_states(config.aliases), "small", adapter_checker(["small"], tmp_path))
    routing = RoutingTable(["small"], book, tmp_path, audit_percent=audit_percent)
    return TestClient(make_api(config, routing, {"small": engine}, runs=RunBook(tmp_path / "turns"),
                               inference_log=InferenceLog(LoggingConfig(), logged.append),
                               decisions=tmp_path / "decisions", store=lambda: log_store, prices=PRICES,
                               erase=partial(erase, FlywheelConfig.model_validate({"home": str(tmp_path), "serve": {
                                   "models": [{"name": "small", "source": "x"}]}})),
                               doctor=lambda: [Check("log store", "ok", "12 records"),
                                               Check("upstream big", "fail", "$BIG_KEY is not set here")]))


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/flywheel/routes", None),
    ("POST", "/v1/flywheel/routes/router", {"adapter": "tuned"}),
    ("POST", "/v1/flywheel/erasures", {"client_id": "alice", "dry_run": False}),
    ("GET", "/v1/flywheel/erasures", None),
    ("GET", "/v1/flywheel/doctor", None),
    ("GET", "/v1/flywheel/logs", None),
    ("GET", "/v1/flywheel/logs/some-id", None),
])
@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401),
    ({"Authorization": "Bearer wrong"}, 403),
    ({"Authorization": "Basic admin-s3cret"}, 401),
    ({"Authorization": "Bearer key-1"}, 403),  # an inference key is not an admin token
])
def test_admin_endpoints_refuse_missing_and_wrong_tokens(secured, method, path, body, headers, status):
    assert_openai_error(secured.request(method, path, json=body, headers=headers), status)
    assert secured.get("/v1/flywheel/routes", headers=ADMIN).json()["aliases"]["router"]["mode"] == "teacher"


def test_admin_endpoints_are_off_without_a_token(client):
    assert "FLYWHEEL_ADMIN_TOKEN" in assert_openai_error(client.get("/v1/flywheel/routes", headers=ADMIN),
                                                         403)["message"]


def test_inference_needs_one_of_the_api_keys(secured, engine):
    assert_openai_error(secured.post("/v1/chat/completions", json=CHAT), 401)
    assert_openai_error(secured.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer no"}), 401)
    assert_openai_error(secured.get("/v1/models"), 401)
    assert engine.calls == []
    ok = secured.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer key-1"})
    assert ok.status_code == 200 and secured.get("/health").status_code == 200


def test_promote_mode_and_rollback_over_http_route_the_next_request(secured, engine, logged):
    key = {"Authorization": "Bearer key-1"}

    def ask():
        response = secured.post("/v1/chat/completions", json={**CHAT, "model": "router"}, headers=key)
        return response.headers["X-Flywheel-Model"]

    assert ask() == "small"
    changed = secured.post("/v1/flywheel/routes/router", json={"adapter": "tuned", "reason": "gate passed"},
                           headers=ADMIN)
    assert changed.status_code == 200 and changed.json()["route"]["student"] == "small:tuned"
    assert ask() == "small:tuned"
    assert secured.post("/v1/flywheel/routes/router", json={"mode": "canary", "percent": 100, "candidate": "next"},
                        headers=ADMIN).status_code == 200
    assert ask() == "small:next"
    assert secured.post("/v1/flywheel/routes/router", json={"rollback": True}, headers=ADMIN).status_code == 200
    assert ask() == "small:tuned"
    assert secured.post("/v1/flywheel/routes/router", json={"rollback": True}, headers=ADMIN).status_code == 200
    assert ask() == "small"
    assert_openai_error(secured.post("/v1/flywheel/routes/router", json={"rollback": True}, headers=ADMIN), 409)
    deadline = time.monotonic() + 5
    while len(logged) < 6 and time.monotonic() < deadline:  # the audit is logged in the background
        time.sleep(0.01)
    answered = [record for record in logged if "shadow_of" not in record.tags]
    assert [record.workload_id for record in answered] == ["router"] * 5  # an alias names its workload
    assert [record.tags["role"] for record in answered] == ["teacher", "student", "candidate", "student", "teacher"]
    (audit,) = [record for record in logged if "shadow_of" in record.tags]  # a canary's answers are all audited
    assert audit.tags["role"] == "teacher" and audit.tags["shadow_of"] == answered[2].id


@pytest.mark.parametrize(("body", "status"), [
    ({}, 400),
    ({"adapter": "tuned", "rollback": True}, 400),
    ({"adapter": 7}, 400),
    ({"mode": "canary", "percent": "half", "candidate": "next"}, 400),
    ({"mode": "canary", "percent": 101, "candidate": "next"}, 400),
    ({"mode": "shadow"}, 400),  # no candidate
    ({"adapter": "ghost"}, 404),
    ({"adapter": "tuned", "force": True}, 400),
    ({"rollback": "yes"}, 400),  # not `true`: no rollback (and no 409 "nothing to roll back to")
    ({"rollback": 1}, 400),
])
def test_bad_route_changes_get_openai_errors_and_change_nothing(secured, body, status):
    assert_openai_error(secured.post("/v1/flywheel/routes/router", json=body, headers=ADMIN), status)
    assert secured.get("/v1/flywheel/routes", headers=ADMIN).json()["version"] == 0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("change", "audit_percent", "adapters", "roles"), [
    ({"mode": "shadow", "candidate": "next"}, 0, (None, "next"), ("teacher", "candidate")),  # a shadow trial
    ({"adapter": "tuned"}, 100, ("tuned", None), ("student", "teacher")),  # the teacher auditing a student
])
def test_a_second_model_answers_in_the_background_linked_in_the_log(tmp_path, engine, logged, log_store, stream,
                                                                    change, audit_percent, adapters, roles):
    client = secured_api(tmp_path, engine, logged, log_store, audit_percent=audit_percent)
    engine.reply = (200, {"id": "x", "object": "chat.completion", "model": "m",
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]})
    assert client.post("/v1/flywheel/routes/router", json=change, headers=ADMIN).status_code == 200
    body = {**CHAT, "model": "router", "stream": stream}
    with client.stream("POST", "/v1/chat/completions", json=body, headers={"Authorization": "Bearer key-1"}) as reply:
        answered = f"small:{adapters[0]}" if adapters[0] else "small"
        assert reply.status_code == 200 and reply.headers["X-Flywheel-Model"] == answered
        reply.read()
    deadline = time.monotonic() + 5
    while len(logged) < 2 and time.monotonic() < deadline:  # the second answers after the client got its reply
        time.sleep(0.01)
    assert tuple(adapter for _, _, adapter in engine.calls) == adapters and engine.calls[1][1]["stream"] is False
    primary, second = logged
    assert (primary.adapter, second.adapter) == adapters and (primary.tags["role"], second.tags["role"]) == roles
    assert primary.tags["shadow"] == second.id and second.tags["shadow_of"] == primary.id
    assert second.request == primary.request and second.status == "ok"


def test_background_answers_past_the_in_flight_limit_are_skipped_and_counted(tmp_path, engine, logged, log_store,
                                                                           monkeypatch):
    skipped = []
    monkeypatch.setattr(telemetry, "shadow_skipped", lambda alias, role: skipped.append((alias, role)))
    client = secured_api(tmp_path, engine, logged, log_store, audit_percent=100, shadow_max_in_flight=0)
    assert client.post("/v1/flywheel/routes/router", json={"adapter": "tuned"}, headers=ADMIN).status_code == 200
    answer = client.post("/v1/chat/completions", json={**CHAT, "model": "router"},
                         headers={"Authorization": "Bearer key-1"})
    assert answer.status_code == 200 and answer.headers["X-Flywheel-Model"] == "small:tuned"
    time.sleep(0.1)
    assert [adapter for _, _, adapter in engine.calls] == ["tuned"] and len(logged) == 1
    assert "shadow" not in logged[0].tags and skipped == [("router", "teacher")]


class BrokenStudent(RecordingEngine):
    """The base answers; an adapter fails as `failure` says: a (status, body) the engine
    returns (an adapter vLLM will not load: 400), or an exception (a timeout)."""

    def __init__(self, failure):
        super().__init__()
        self.failure = failure
        self.reply = (200, {"id": "x", "object": "chat.completion", "model": "m",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]})

    async def respond(self, endpoint, body, adapter):
        if adapter is None:
            return await super().respond(endpoint, body, adapter)
        self.calls.append((endpoint, body, adapter))
        if isinstance(self.failure, BaseException):
            raise self.failure
        return self.failure

    async def stream(self, endpoint, body, adapter):
        if adapter is None:
            async for item in super().stream(endpoint, body, adapter):
                yield item
            return
        self.calls.append((endpoint, body, adapter))
        if isinstance(self.failure, BaseException):
            raise self.failure
        yield self.failure


LOAD_FAILED = (400, error_body(400, "adapter 'tuned' could not be loaded: bad safetensors header", "model"))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("failure", "status"), [(LOAD_FAILED, 400), (TimeoutError(), 504)])
def test_a_student_that_fails_an_aliass_request_hands_it_to_the_teacher(tmp_path, logged, log_store, stream,
                                                                        failure, status, monkeypatch):
    fell_back = []
    monkeypatch.setattr(telemetry, "fell_back", lambda alias, role: fell_back.append((alias, role)))
    engine = BrokenStudent(failure)
    client = secured_api(tmp_path, engine, logged, log_store)
    assert client.post("/v1/flywheel/routes/router", json={"adapter": "tuned"}, headers=ADMIN).status_code == 200
    key = {"Authorization": "Bearer key-1"}
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "model": "router", "stream": stream},
                       headers=key) as reply:
        assert reply.status_code == 200 and reply.headers["X-Flywheel-Model"] == "small"
        assert ("Hel" if stream else "hi") in reply.read().decode()
    assert [adapter for _, _, adapter in engine.calls] == ["tuned", None]
    failed, answered = logged
    assert (failed.adapter, failed.status, failed.tags["role"]) == ("tuned", "error", "student")
    assert failed.error.startswith(f"HTTP {status}") and answered.id == reply.headers["X-Flywheel-Log-Id"]
    assert (answered.adapter, answered.status, answered.tags["role"]) == (None, "ok", "teacher")
    assert answered.tags["route_note"] == f"student small:tuned failed with HTTP {status} (log {failed.id})"
    assert answered.tags["fallback_of"] == failed.id and fell_back == [("router", "student")]
    direct = client.post("/v1/chat/completions", json={**CHAT, "model": "small:tuned"}, headers=key)
    assert direct.status_code == status  # named directly, not through an alias: the client sees the failure


class SlowModels(BrokenStudent):
    """The student never answers; the teacher answers after `teacher_s`."""

    def __init__(self, teacher_s: float):
        super().__init__(None)
        self.teacher_s = teacher_s

    async def respond(self, endpoint, body, adapter):
        await asyncio.sleep(self.teacher_s if adapter is None else 60)
        return await super().respond(endpoint, body, adapter)


@pytest.mark.parametrize(("teacher_s", "status"), [(0.0, 200), (60.0, 504)])
def test_a_student_that_does_not_answer_in_time_leaves_the_teacher_the_rest_of_the_wait(tmp_path, teacher_s, status):
    """`fallback_after_s` 0.3 of `request_timeout_s` 1: the teacher answers after 0.3 s; a
    teacher that hangs too gets a 504 at 1 s, the client's whole wait, not 0.3 + 1."""
    (tmp_path / "small" / "tuned").mkdir(parents=True)
    (tmp_path / "small" / "tuned" / "adapter_config.json").write_text("{}")
    config = ServeConfig(models=[{"name": "small", "source": "x"}], request_timeout_s=1.0, fallback_after_s=0.3,
                         aliases={"router": RouteTarget(base="small", adapter="tuned")})
    book = RouteBook(tmp_path / "routes.json", seed_states(config.aliases), "small", adapter_checker(["small"], tmp_path))
    logged: list = []
    client = TestClient(make_api(config, RoutingTable(["small"], book, tmp_path), {"small": SlowModels(teacher_s)},
                                 inference_log=InferenceLog(LoggingConfig(), logged.append)))
    began = time.monotonic()
    reply = client.post("/v1/chat/completions", json={**CHAT, "model": "router"})
    waited = time.monotonic() - began
    assert reply.status_code == status and (0.3 <= waited < 0.9 if status == 200 else 1.0 <= waited < 1.25)
    failed, answered = logged
    assert (failed.tags["role"], failed.error) == ("student", "HTTP 504: the model did not answer in time")
    assert answered.tags["role"] == "teacher" and answered.status == ("ok" if status == 200 else "error")
    with pytest.raises(ValueError, match="must be less than request_timeout_s"):
        ServeConfig(models=[{"name": "small", "source": "x"}], request_timeout_s=1.0, fallback_after_s=1.0)


def test_runs_endpoints_queue_list_show_and_cancel_turns(secured):
    assert_openai_error(secured.post("/v1/flywheel/runs", json={"workload": "support"}), 401)
    assert_openai_error(secured.get("/v1/flywheel/runs", headers={"Authorization": "Bearer no"}), 403)
    queued = secured.post("/v1/flywheel/runs", json={"workload": "support", "max_steps": 5}, headers=ADMIN)
    assert queued.status_code == 202
    run = queued.json()
    assert (run["status"], run["workload"], run["options"]) == ("pending", "support", {"max_steps": 5})
    assert [r["run_id"] for r in secured.get("/v1/flywheel/runs", headers=ADMIN).json()["runs"]] == [run["run_id"]]
    shown = secured.get(f"/v1/flywheel/runs/{run['run_id']}", headers=ADMIN).json()
    assert shown["stages"]["curate"]["status"] == "pending" and shown["decision"] is None
    cancelled = secured.post(f"/v1/flywheel/runs/{run['run_id']}/cancel", headers=ADMIN).json()
    assert cancelled["status"] == "cancelled" and cancelled["cancel_requested"]
    assert_openai_error(secured.get("/v1/flywheel/runs/nope", headers=ADMIN), 404)
    assert_openai_error(secured.post("/v1/flywheel/runs/nope/cancel", headers=ADMIN), 404)


def test_the_decisions_endpoint_lists_recorded_gate_decisions_newest_first(secured, tmp_path):
    assert_openai_error(secured.get("/v1/flywheel/decisions"), 401)
    assert secured.get("/v1/flywheel/decisions", headers=ADMIN).json() == {"decisions": []}
    config = FlywheelConfig.model_validate({"home": str(tmp_path), "serve": {"models": [{"name": "small",
                                                                                         "source": "x"}]}})
    for alias, candidate, outcome in (("router", "tuned", "promoted"), ("other", "x", "unchanged"),
                                      ("router", "next", "withdrawn")):
        record_decision(config, Decision(alias=alias, candidate=candidate, incumbent=None,
                                         promote=outcome == "promoted", reasons=[f"{outcome} because"],
                                         metric="token_f1", candidate_score=0.9, teacher_score=1.0,
                                         teacher_ratio=0.9, versus_incumbent=None, eval_size=60, report_id="r",
                                         outcome=outcome))
    every = secured.get("/v1/flywheel/decisions", headers=ADMIN).json()["decisions"]
    assert [d["candidate"] for d in every] == ["next", "x", "tuned"]
    router = secured.get("/v1/flywheel/decisions", params={"alias": "router", "limit": 1}, headers=ADMIN).json()
    assert [(d["candidate"], d["outcome"], d["reasons"]) for d in router["decisions"]] == [
        ("next", "withdrawn", ["withdrawn because"])]
    for params in ({"limit": 0}, {"limit": "many"}, {"alias": "../turns"}):
        assert_openai_error(secured.get("/v1/flywheel/decisions", params=params, headers=ADMIN), 400)


def test_the_savings_endpoint_reports_from_the_log_store(secured, log_store):
    assert_openai_error(secured.get("/v1/flywheel/savings"), 401)
    log_store.write_batch(traffic())
    report = secured.get("/v1/flywheel/savings", params={"workload": "support"}, headers=ADMIN).json()
    assert report == json.loads(json.dumps(savings_report(log_store, PRICES, workload="support")))
    assert report["workloads"]["support"]["student"]["requests"] == 3
    recent = secured.get("/v1/flywheel/savings", params={"days": "1.5"}, headers=ADMIN).json()
    assert recent["workloads"] == {} and recent["since"] > time.time() - 1.5 * 86400 - 60  # the traffic is older
    for days in ("-1", "soon", "nan", "inf"):
        assert_openai_error(secured.get("/v1/flywheel/savings", params={"days": days}, headers=ADMIN), 400)


def test_the_doctor_endpoint_reports_this_replicas_checks(secured):
    report = secured.get("/v1/flywheel/doctor", headers=ADMIN).json()
    assert report["ok"] is False and report["node"] == socket.gethostname()
    assert report["checks"] == [{"name": "log store", "status": "ok", "detail": "12 records"},
                                {"name": "upstream big", "status": "fail", "detail": "$BIG_KEY is not set here"}]


def test_the_erasure_endpoint_counts_then_deletes_records_and_their_dataset_rows(secured, log_store, tmp_path):
    records = [LogRecord(workload_id="support", client_id=client, model="small",
                         request={"messages": [{"role": "user", "content": f"I am {client}"}]})
               for client in ("alice", "alice", "bob")]
    log_store.write_batch(records)
    messages = json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    rows = [{"id": record.id, "label": "a", "source": "teacher", "tools": "[]", "messages": messages}
            for record in records]
    dataset = write_dataset(tmp_path / "datasets", "support", {"train": rows, "val": [], "eval": [], "icl": []},
                            {"prefix": None}, {"train": 3}, [])
    for body in ({}, {"dry_run": False}, {"client_id": ""}, {"client_id": 7}, {"client_id": "alice", "who": 1},
                 {"client_id": "alice", "dry_run": "no"}, {"client_id": "alice", "retire_adapters": 1},
                 {"older_than_days": -1}, {"older_than_days": True}, {"contains": 5}, {"contains": " ab "},
                 {"contains": []}, {"contains": ["bob's", 5]}, {"contains": ["I AM BOB", "x"]},
                 {"contains": ["I AM BOB", "Content"]}):
        assert_openai_error(secured.post("/v1/flywheel/erasures", json=body, headers=ADMIN), 400)
    counted = secured.post("/v1/flywheel/erasures", json={"client_id": "alice"}, headers=ADMIN).json()
    assert (counted["matched"], counted["deleted"], counted["dry_run"]) == (2, 0, True) and log_store.count() == 3
    assert counted["datasets"] == {dataset.dataset_id: {"train": 2}} and counted["filter"] == {"client_id": "alice"}
    with RunBook(tmp_path / "turns").workload_idle("support"):
        busy = secured.post("/v1/flywheel/erasures", json={"client_id": "alice", "dry_run": False}, headers=ADMIN)
    assert "a turn of workload 'support' is running" in assert_openai_error(busy, 409)["message"]
    done = secured.post("/v1/flywheel/erasures", json={"client_id": "alice", "dry_run": False}, headers=ADMIN).json()
    assert (done["matched"], done["deleted"], done["dry_run"]) == (2, 2, False)
    assert [record.client_id for record in log_store.query().records] == ["bob"]
    assert [row["id"] for row in dataset.rows("train")] == [records[2].id]
    [remembered] = secured.get("/v1/flywheel/erasures", headers=ADMIN).json()["data"]
    assert remembered["filter"] == {"client_id": "alice"}  # the dry runs and the refused one left none
    assert log_store.write_batch(records[:1]) == 0  # a late copy of alice's record stays out
    mentioned = secured.post("/v1/flywheel/erasures", json={"contains": "I AM BOB"}, headers=ADMIN).json()
    assert (mentioned["matched"], mentioned["filter"]) == (1, {"contains": "I AM BOB"})
    either = secured.post("/v1/flywheel/erasures", json={"contains": ["nobody's", "i am BOB"]}, headers=ADMIN).json()
    assert (either["matched"], either["filter"]) == (1, {"contains": ["nobody's", "i am BOB"]})


def test_the_logs_endpoint_pages_through_what_the_store_holds_about_someone(secured, log_store):
    said = ["I am Ana, ana@example.org", "hello", "write to ANA@example.org", "anna@example.org here"]
    records = [LogRecord(workload_id="support", client_id=client, model="small", timestamp=1_700_000_000 + i,
                         request={"messages": [{"role": "user", "content": text}]})
               for i, (client, text) in enumerate(zip(["alice", "bob", "bob", "carol"], said, strict=True))]
    log_store.write_batch(records)
    seen, after = [], None
    while True:
        page = secured.get("/v1/flywheel/logs", params={"contains": "ana@example.org", "limit": "1",
                                                        **({"after": after} if after else {})}, headers=ADMIN).json()
        assert page["object"] == "list" and len(page["data"]) <= 1
        seen += [record["id"] for record in page["data"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == [records[2].id, records[0].id]  # newest first; not anna's
    bobs = secured.get("/v1/flywheel/logs", params={"client_id": "bob", "order": "asc"}, headers=ADMIN).json()
    assert [LogRecord.model_validate(record) for record in bobs["data"]] == records[1:3] and bobs["next"] is None
    either = secured.get("/v1/flywheel/logs", params=[("contains", "ana@example.org"), ("contains", "ANNA@")],
                         headers=ADMIN).json()
    assert [record["id"] for record in either["data"]] == [records[3].id, records[2].id, records[0].id]
    one = secured.get(f"/v1/flywheel/logs/{records[3].id}", headers=ADMIN).json()
    assert LogRecord.model_validate(one) == records[3]
    assert "no logged inference" in assert_openai_error(secured.get("/v1/flywheel/logs/nope", headers=ADMIN),
                                                        404)["message"]
    for params in ({"limit": "0"}, {"limit": "many"}, {"order": "up"}, {"status": "fine"}, {"contains": ""},
                   {"after": "not-a-cursor"}):
        assert assert_openai_error(secured.get("/v1/flywheel/logs", params=params, headers=ADMIN),
                                   400)["param"] == next(iter(params))
    # a misspelt filter is refused: ignored, `client=bob` would hand over every client's records
    typo = assert_openai_error(secured.get("/v1/flywheel/logs", params={"client": "bob"}, headers=ADMIN), 400)
    assert typo["param"] == "client" and typo["message"].startswith("unknown query parameter(s) client; use ")
    assert "client_id" in typo["message"]


@pytest.mark.parametrize(("path", "params"), [("/v1/flywheel/savings", {"since": "2026-01-01"}),
                                              ("/v1/flywheel/decisions", {"workload": "w"}),
                                              ("/v1/flywheel/runs", {"status": "failed"}),
                                              ("/v1/flywheel/erasures", {"client_id": "bob"})])
def test_admin_endpoints_refuse_a_query_parameter_they_do_not_take(secured, path, params):
    error = assert_openai_error(secured.get(path, params=params, headers=ADMIN), 400)
    assert error["param"] == next(iter(params)) and "unknown query parameter" in error["message"]
    assert secured.get(path, headers=ADMIN).status_code == 200


@pytest.mark.parametrize("body", [{}, {"workload": 3}, {"workload": "../x"}, {"workload": "w", "max_steps": 0},
                                  {"workload": "w", "max_steps": True}, {"workload": "w", "go": 1}])
def test_bad_run_requests_get_openai_errors(secured, body):
    assert_openai_error(secured.post("/v1/flywheel/runs", json=body, headers=ADMIN), 400)
    assert secured.get("/v1/flywheel/runs", headers=ADMIN).json()["runs"] == []
