"""Online evaluation from shadow pairs (flywheel/shadow.py) on a real SQLite store: the
candidate's answer is scored against the teacher's answer to the same request, per
candidate, and pairs whose teacher answer failed or is missing are skipped."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flywheel.records import LogRecord
from flywheel.shadow import shadow_pairs, shadow_report
from flywheel.store import open_store

REQUEST = {"model": "support", "messages": [{"role": "user", "content": "where is ORD-1?"}]}


def call(name: str, **arguments) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]}


def answered(message: dict, tokens: int, **fields) -> LogRecord:
    return LogRecord(workload_id="support", client_id="c", model="support", request=REQUEST,
                     response={"choices": [{"index": 0, "message": message}]}, usage={"total_tokens": tokens},
                     **fields)


def pair(teacher: dict, candidate: dict, adapter: str, teacher_status: str = "ok") -> list[LogRecord]:
    primary = answered(teacher, 1000, base_model="big", latency_ms=900.0, status=teacher_status,
                       tags={"mode": "shadow", "role": "teacher"})
    shadow = answered(candidate, 100, base_model="small", adapter=adapter, latency_ms=300.0,
                      tags={"mode": "shadow", "role": "candidate", "shadow_of": primary.id})
    return [primary, shadow]


@pytest.fixture
def store(tmp_path):
    opened = open_store(f"sqlite:///{tmp_path / 'logs.db'}")
    yield opened
    opened.close()


def test_each_candidate_is_scored_against_the_teachers_answers(store):
    status = call("get_order_status", order_id="ORD-1")
    records = []
    for _ in range(3):
        records += pair(status, call("get_order_status", order_id=" ORD-1"), "trial")  # arguments normalize
    records += pair(status, call("cancel_order", order_id="ORD-1"), "trial")  # wrong tool
    records += pair(status, call("get_order_status", order_id="ORD-9"), "other")  # right tool, wrong order
    records += pair(status, status, "trial", teacher_status="error")  # nothing to compare with
    orphan = answered(status, 100, base_model="small", adapter="trial", tags={"shadow_of": "gone"})
    plain = answered(status, 1000, base_model="big")  # ordinary traffic
    store.write_batch([*records, orphan, plain])

    report = shadow_report(store, "support")
    trial, other = report["candidates"]["small:trial"], report["candidates"]["small:other"]
    assert trial["n"] == 4 and other["n"] == 1
    assert trial["metrics"]["function_name_and_args"]["mean"] == pytest.approx(0.75)
    assert trial["metrics"]["function_name"]["mean"] == pytest.approx(0.75)
    assert other["metrics"]["function_name"]["mean"] == 1.0
    assert other["metrics"]["function_name_and_args"]["mean"] == 0.0
    low, high = trial["metrics"]["function_name_and_args"]["low"], trial["metrics"]["function_name_and_args"]["high"]
    assert low < 0.75 < high
    assert trial["latency_ms"] == {"teacher": 900.0, "candidate": 300.0}
    assert trial["tokens"] == {"teacher": 1000, "candidate": 100}
    assert shadow_report(store, "elsewhere")["candidates"] == {}


def test_pairs_are_newest_first_and_limited(store):
    for i in range(5):
        store.write_batch(pair(call("lookup", n=i), call("lookup", n=i), "trial"))
    newest = shadow_pairs(store, "support", limit=2)["small:trial"]
    assert [json.loads(p.response["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])["n"]
            for p, _ in newest] == [4, 3]


def test_the_cli_reports_pairs_as_a_table_and_as_json(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    store = open_store(f"sqlite:///{home / 'logs.db'}")
    store.write_batch(pair(call("lookup", n=1), call("lookup", n=1), "trial"))
    store.close()

    def flywheel(*args):
        result = subprocess.run([sys.executable, "-m", "flywheel.cli", "shadow-report", *args], check=False, text=True,
                                capture_output=True, env={"FLYWHEEL_HOME": str(home), "PATH": "/usr/bin:/bin",
                                                          "COLUMNS": "200"}, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    table = flywheel("--workload", "support")
    assert "small:trial" in table and "function_name_and_args" in table
    report = json.loads(flywheel("--workload", "support", "--hours", "1", "--json").strip().splitlines()[-1])
    assert report["candidates"]["small:trial"]["metrics"]["function_name_and_args"]["mean"] == 1.0
    assert "no shadow pairs" in flywheel("--workload", "nobody")
