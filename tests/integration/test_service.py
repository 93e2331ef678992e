"""The service through the official `openai` client and raw HTTP, against real vLLM."""

from __future__ import annotations

import json

import httpx
import pytest
from openai import OpenAI

from tests.integration.conftest import ADMIN_TOKEN, MODEL, RAY_CPUS, RELAY, logged_record

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def client(service) -> OpenAI:
    return OpenAI(base_url=service.base_url, api_key="unused", max_retries=0, timeout=120)


def test_health_and_models(service, client):
    health = httpx.get(f"{service.url}/health", timeout=30)
    assert health.status_code == 200 and health.json()["models"] == {MODEL: "ok", RELAY: "ok"}
    ids = {m.id for m in client.models.list().data}
    assert {MODEL, "support-router"} <= ids


def test_chat_plain_and_through_an_alias(client):
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    assert reply.object == "chat.completion" and reply.model == MODEL
    assert "Paris" in reply.choices[0].message.content
    assert reply.usage.completion_tokens <= 24 and reply.usage.prompt_tokens > 5
    aliased = client.chat.completions.create(model="support-router", messages=QUESTION, max_tokens=24,
                                             temperature=0)
    assert aliased.choices[0].message.content == reply.choices[0].message.content


def test_chat_streaming_matches_non_streaming(client):
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24,
                                                 temperature=0, stream=True))
    assert len(chunks) > 3
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content


def test_a_model_another_api_serves_is_forwarded_and_logged(service, client):
    """`serve.upstreams`: `relay` is this service's own /v1 named as an upstream (a hosted API
    cannot be reached from here), so the forward is real HTTP to an OpenAI-compatible server
    with vLLM behind it: same answers as asking the model directly, streamed too, and the
    relayed answer is logged as `relay`'s."""
    direct = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    relayed = client.chat.completions.create(model=RELAY, messages=QUESTION, max_tokens=24, temperature=0,
                                             extra_headers={"X-Workload-Id": "relay-test"})
    assert relayed.choices[0].message.content == direct.choices[0].message.content
    assert relayed.usage.total_tokens == direct.usage.total_tokens
    chunks = list(client.chat.completions.create(model=RELAY, messages=QUESTION, max_tokens=24, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct.choices[0].message.content
    record = logged_record(service, relayed.id)
    assert (record.workload_id, record.base_model, record.adapter, record.status) == ("relay-test", RELAY, None, "ok")
    assert record.response["choices"][0]["message"]["content"] == direct.choices[0].message.content
    assert record.usage["total_tokens"] == direct.usage.total_tokens


def test_sampling_parameters_are_honoured(client):
    stopped = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0,
                                             stop=["Paris"])
    assert "Paris" not in stopped.choices[0].message.content
    seeded = [client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=1.0,
                                             top_p=0.9, seed=1234).choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_completions(client):
    reply = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=6, temperature=0)
    assert reply.object == "text_completion" and "5" in reply.choices[0].text


BAD_INPUTS = [
    ("not json", b"{oops", 400),
    ("not an object", b"[]", 400),
    ("no model", {"messages": QUESTION}, 400),
    ("unknown model", {"model": "gpt-17", "messages": QUESTION}, 404),
    ("unknown adapter", {"model": f"{MODEL}:ghost", "messages": QUESTION}, 404),
    ("empty messages", {"model": MODEL, "messages": []}, 400),
    ("messages not a list", {"model": MODEL, "messages": "hi"}, 400),
    ("max_tokens past context", {"model": MODEL, "messages": QUESTION, "max_tokens": 100_000}, 400),
    ("streamed, max_tokens past context",
     {"model": MODEL, "messages": QUESTION, "max_tokens": 100_000, "stream": True}, 400),
    ("temperature wrong type", {"model": MODEL, "messages": QUESTION, "temperature": "hot"}, 400),
    ("negative max_tokens", {"model": MODEL, "messages": QUESTION, "max_tokens": -5}, 400),
    ("completion without prompt", {"model": MODEL, "max_tokens": 5}, 400),
    ("body too large", {"model": MODEL, "messages": QUESTION, "pad": "x" * 5_000_000}, 413),
]


@pytest.mark.parametrize(("case", "body", "status"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_its_status_and_the_service_keeps_answering(service, client, case, body, status):
    path = "/v1/completions" if case == "completion without prompt" else "/v1/chat/completions"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{service.url}{path}", content=content,
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and error["message"]
    ok = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=0)
    assert ok.choices[0].message.content


def test_feedback_over_http_reaches_the_log_store(service):
    from flywheel.records import LogRecord
    from flywheel.store import open_store

    store = open_store(service.store_url)
    record = LogRecord(workload_id="support", client_id="web", model=MODEL, request={"messages": QUESTION})
    store.write_batch([record])
    body = {"log_id": record.id, "rating": 1, "correction": {"role": "assistant", "content": "Paris."}}
    response = httpx.post(f"{service.base_url}/feedback", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert store.get(record.id).feedback[0].correction["content"] == "Paris."
    missing = httpx.post(f"{service.base_url}/feedback", json={**body, "log_id": "nope"}, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "log_id"
    store.close()


def test_a_client_is_erased_over_http_with_its_dataset_rows(service):
    """What a privacy tool calls: the live ingress deletes a client's logged answer and its
    row in a curated dataset under the service's home."""
    from flywheel.datasets import write_dataset
    from flywheel.store import LogFilter, open_store

    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4, "temperature": 0}
    answered = httpx.post(f"{service.base_url}/chat/completions", json=body, timeout=60,
                          headers={"X-Workload-Id": "erasure", "X-Client-Id": "erase-me"})
    log_id = answered.headers["X-Flywheel-Log-Id"]
    assert answered.status_code == 200 and logged_record(service, log_id).client_id == "erase-me"
    row = {"id": log_id, "label": "a", "source": "teacher", "tools": "[]",
           "messages": json.dumps(QUESTION + [{"role": "assistant", "content": "Paris."}])}
    dataset = write_dataset(service.home / "datasets", "erasure", {"train": [row], "val": [], "eval": [], "icl": []},
                            {"prefix": None}, {"train": 1}, [])
    url, admin = f"{service.base_url}/flywheel/erasures", {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    logs = f"{service.base_url}/flywheel/logs"  # the access request first: what the store holds
    held = httpx.get(logs, params={"client_id": "erase-me"}, headers=admin, timeout=60).json()
    assert [record["id"] for record in held["data"]] == [log_id] and held["next"] is None
    assert httpx.get(f"{logs}/{log_id}", headers=admin, timeout=60).json()["client_id"] == "erase-me"
    counted = httpx.post(url, json={"client_id": "erase-me"}, headers=admin, timeout=60).json()
    assert (counted["matched"], counted["deleted"], counted["datasets"]) == (1, 0, {dataset.dataset_id: {"train": 1}})
    done = httpx.post(url, json={"client_id": "erase-me", "dry_run": False}, headers=admin, timeout=60).json()
    assert (done["matched"], done["deleted"], done["dry_run"]) == (1, 1, False)
    store = open_store(service.store_url)
    assert store.get(log_id) is None and store.count(LogFilter(client_id="erase-me")) == 0
    store.close()
    assert dataset.rows("train") == [] and httpx.get(f"{logs}/{log_id}", headers=admin, timeout=60).status_code == 404
    remembered = httpx.get(url, headers=admin, timeout=60).json()["data"]
    assert {"client_id": "erase-me"} in [erasure["filter"] for erasure in remembered]
    again = httpx.post(f"{service.base_url}/chat/completions", json=body, timeout=60,
                       headers={"X-Workload-Id": "erasure", "X-Client-Id": "erase-me"})
    assert logged_record(service, again.headers["X-Flywheel-Log-Id"]).client_id == "erase-me"  # sent afterwards: kept


def test_the_doctor_runs_in_the_ingress_and_sees_the_cluster_it_serves_from(service, tmp_path):
    """`flywheel doctor --service`: the checks run in the ingress replica, against the Ray
    cluster it lives in (not a new local instance) and with that process's environment."""
    import subprocess
    import sys

    import yaml

    config = yaml.safe_load((service.home / "config.yaml").read_text())
    config["evaluate"] = {**config.get("evaluate", {}), "service_url": service.url}  # the port `serve` was given
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "flywheel.cli", "doctor", "--service", "--json", "--config",
                             str(tmp_path / "config.yaml")], check=False, capture_output=True, text=True,
                            timeout=300, env={**service.env, "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip(), result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    checks = {check["name"]: check for check in report["checks"]}
    assert report["where"].startswith("the service's ingress on ")
    assert checks["ray"]["status"] == "ok" and f"{RAY_CPUS} CPUs" in checks["ray"]["detail"]
    assert checks["log store"]["status"] == "ok" and checks[f"model {MODEL}"]["status"] == "ok"
    assert checks["service"]["status"] == "ok" and checks["upstream relay"]["status"] == "ok"
    assert result.returncode == (1 if not report["ok"] else 0)


@pytest.mark.parametrize("stream", [False, True])
def test_every_inference_is_logged_off_the_hot_path(service, stream):
    body = {"model": "support-router", "messages": QUESTION, "max_tokens": 12, "temperature": 0, "stream": stream}
    headers = {"X-Workload-Id": "capitals", "X-Client-Id": "tests", "Authorization": "Bearer sk-never-logged"}
    with httpx.stream("POST", f"{service.base_url}/chat/completions", json=body, headers=headers,
                      timeout=60) as response:
        text = "".join(response.iter_text())
        log_id = response.headers["X-Flywheel-Log-Id"]
    assert response.status_code == 200 and log_id in text  # the completion id is the log id
    record = logged_record(service, log_id)
    assert (record.workload_id, record.client_id, record.model) == ("capitals", "tests", "support-router")
    assert (record.base_model, record.adapter, record.status) == (MODEL, None, "ok")
    assert "Paris" in record.response["choices"][0]["message"]["content"]
    assert record.latency_ms > 0 and (record.ttft_ms is not None) == stream
    assert "sk-never-logged" not in record.model_dump_json()
