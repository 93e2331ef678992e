"""Online evaluation from shadow pairs (flywheel/shadow.py) on a real SQLite store: the
candidate's answer is scored against the teacher's answer to the same request, per
candidate, a failed candidate answer scores as wrong, and pairs whose teacher answer
failed or is missing are skipped. Then the shadow trial gate (flywheel/gate.py
`gate_shadow`) on such pairs: pending, promoted, withdrawn (early, or for slow answers), and
from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flywheel import telemetry
from flywheel.config import FlywheelConfig
from flywheel.gate import decide_shadow, gate_audit, gate_shadow, list_decisions
from flywheel.records import LogRecord
from flywheel.routes import open_route_book
from flywheel.shadow import shadow_pairs, shadow_report
from flywheel.store import open_store
from flywheel.watch import Watcher

TOOLS = [{"type": "function", "function": {"name": "get_order_status", "parameters": {"type": "object"}}}]
REQUEST = {"model": "support", "messages": [{"role": "user", "content": "where is ORD-1?"}], "tools": TOOLS}


def call(name: str, **arguments) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]}


def answered(message: dict, tokens: int, model: str = "support", **fields) -> LogRecord:
    return LogRecord(workload_id="support", client_id="c", model=model, request=REQUEST,
                     response={"choices": [{"index": 0, "message": message}]}, usage={"total_tokens": tokens},
                     **fields)


def pair(teacher: dict, candidate: dict | None, adapter: str, teacher_status: str = "ok",
         base: str = "small", model: str = "support", **fields) -> list[LogRecord]:
    """A teacher answer and the candidate's shadow of it (`candidate` None: the shadow failed)."""
    primary = answered(teacher, 1000, model, base_model="big", latency_ms=900.0, status=teacher_status,
                       tags={"mode": "shadow", "role": "teacher"}, **fields)
    tags = {"mode": "shadow", "role": "candidate", "shadow_of": primary.id}
    if candidate is None:
        shadow = LogRecord(workload_id="support", client_id="c", model=model, request=REQUEST, base_model=base,
                           adapter=adapter, status="error", error="HTTP 500: engine died", tags=tags, **fields)
    else:
        shadow = answered(candidate, 100, model, base_model=base, adapter=adapter, latency_ms=300.0, tags=tags,
                          **fields)
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
    records += pair(status, None, "trial")  # the candidate failed: a wrong answer
    records += pair(status, status, "trial", teacher_status="error")  # nothing to compare with
    orphan = answered(status, 100, base_model="small", adapter="trial", tags={"shadow_of": "gone"})
    plain = answered(status, 1000, base_model="big")  # ordinary traffic
    store.write_batch([*records, orphan, plain])

    report = shadow_report(store, "support")
    trial, other = report["candidates"]["small:trial"], report["candidates"]["small:other"]
    assert trial["n"] == 5 and trial["errors"] == 1 and other["n"] == 1 and other["errors"] == 0
    assert trial["metrics"]["function_name_and_args"]["mean"] == pytest.approx(0.6)
    assert trial["metrics"]["function_name"]["mean"] == pytest.approx(0.6)
    assert other["metrics"]["function_name"]["mean"] == 1.0
    assert other["metrics"]["function_name_and_args"]["mean"] == 0.0
    low, high = trial["metrics"]["function_name_and_args"]["low"], trial["metrics"]["function_name_and_args"]["high"]
    assert low < 0.6 < high
    assert trial["latency_ms"] == {"teacher": 900.0, "candidate": 300.0}  # of the answers given
    assert trial["tokens"] == {"teacher": 1000, "candidate": 100}
    assert report["primary_metric"] == "function_name_and_args"  # these requests offered tools
    assert shadow_report(store, "elsewhere")["candidates"] == {}
    assert list(shadow_report(store, None, candidate="small:other")["candidates"]) == ["small:other"]


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
    assert "no shadow pairs for workload nobody" in flywheel("--workload", "nobody")
    assert "small:trial" in json.loads(flywheel("--alias", "support", "--json").splitlines()[-1])["candidates"]
    assert "no shadow pairs for alias support-eu" in flywheel("--alias", "support-eu")


@pytest.fixture
def trial_config(tmp_path):
    for name in ("old", "trial"):
        (tmp_path / "adapters" / "small" / name).mkdir(parents=True)
        (tmp_path / "adapters" / "small" / name / "adapter_config.json").write_text("{}")
    return FlywheelConfig.model_validate({
        "home": str(tmp_path), "serve": {"models": [{"name": "small", "source": "x"}]},
        "gate": {"rollout": "shadow", "shadow_min_pairs": 10, "min_teacher_ratio": 0.9}})


class Recorded:
    """Stands in for `ray.util.metrics` objects: the real ones export only from a Ray
    process, through an agent that flushes every few seconds; the integration tier reads
    that endpoint for the turn's metrics."""

    def __init__(self, name: str, values: dict):
        self.name, self.values = name, values

    def set(self, value, tags):
        self.values[(self.name, *tags.values())] = value

    inc = set


@pytest.fixture
def metrics(monkeypatch):
    """What flywheel/telemetry.py reports: (name, *tag values) -> latest value."""
    values: dict = {}
    monkeypatch.setattr(telemetry, "_metric", lambda kind, name, *args, **kwargs: Recorded(name, values))
    return values


def test_a_shadow_trial_waits_for_enough_pairs_then_promotes_or_withdraws(trial_config, metrics):
    config = trial_config
    store = open_store(config.store_url)
    book = open_route_book(config)
    book.promote("support", "old")
    status, wrong = call("get_order_status", order_id="ORD-1"), call("cancel_order", order_id="ORD-1")
    store.write_batch(pair(status, wrong, "trial", timestamp=time.time() - 60) * 20)  # before the trial: not counted
    book.set_mode("support", "shadow", candidate="trial")
    assert gate_shadow(config, book, store, "elsewhere") is None  # not on trial

    for _ in range(5):
        store.write_batch(pair(status, status, "trial"))
        store.write_batch(pair(status, status, "trial", model="support-eu"))  # another alias's trial of it
    waiting = gate_shadow(config, book, store, "support")
    assert waiting.pending and not waiting.promote and waiting.eval_size == 5
    assert (metrics[("flywheel_shadow_pairs", "support", "small:trial")],
            metrics[("flywheel_shadow_score", "support", "small:trial")]) == (5, 1.0)  # for the dashboard
    assert book.get("support").mode == "shadow" and list_decisions(config, "support") == []

    for _ in range(5):
        store.write_batch(pair(status, status, "trial"))
    store.write_batch(pair(status, None, "trial"))  # one failure: 10/11 = 0.91, still >= 0.9
    passed = gate_shadow(config, book, store, "support")
    assert passed.promote and not passed.pending and passed.outcome == "promoted"
    assert (passed.eval_size, passed.incumbent, passed.metric) == (11, "old", "function_name_and_args")
    assert passed.candidate_score == pytest.approx(10 / 11)
    assert metrics[("flywheel_shadow_pairs", "support", "small:trial")] == 11
    assert metrics[("flywheel_shadow_score", "support", "small:trial")] == pytest.approx(10 / 11)
    state = book.get("support")
    assert (state.mode, state.student) == ("student", "small:trial") and "shadow trial passed" in state.reason

    book.set_mode("support", "shadow", candidate="old")  # the former student on trial: the incumbent's pairs
    for index in range(10):                              # since it began do not count for it
        store.write_batch(pair(status, status if index < 8 else wrong, "old"))
    failed = gate_shadow(config, book, store, "support")
    assert not failed.promote and failed.outcome == "withdrawn" and failed.candidate_score == pytest.approx(0.8)
    assert metrics[("flywheel_shadow_score", "support", "small:old")] == pytest.approx(0.8)
    assert any(reason.startswith("fail") and "0.800" in reason for reason in failed.reasons)
    state = book.get("support")
    assert (state.mode, state.student) == ("student", "small:trial") and "shadow trial failed" in state.reason
    assert [d["outcome"] for d in list_decisions(config, "support")] == ["promoted", "withdrawn"]
    store.close()


def test_a_trial_retired_while_it_is_judged_is_not_promoted_and_its_decision_says_so(trial_config, monkeypatch):
    """An erasure retires the candidate after the watcher read the trial and before it acts
    (its files still exist then): the routing table refuses, and the recorded decision
    says refused, not promoted."""
    from flywheel import shadow

    config = trial_config
    store = open_store(config.store_url)
    book = open_route_book(config)
    book.promote("support", "old")
    book.set_mode("support", "shadow", candidate="trial")
    status = call("get_order_status", order_id="ORD-1")
    for _ in range(10):
        store.write_batch(pair(status, status, "trial"))
    report = shadow.shadow_report

    def erased_meanwhile(*args, **kwargs):
        book.retire({"trial"}, "retired: it learned from erased records")
        return report(*args, **kwargs)

    counted = []
    monkeypatch.setattr(shadow, "shadow_report", erased_meanwhile)
    monkeypatch.setattr(telemetry, "decided", lambda alias, outcome: counted.append((alias, outcome)))
    decided = gate_shadow(config, book, store, "support")
    assert decided.promote and decided.outcome == "refused"
    assert decided.reasons[-1].startswith("promotion refused: adapter 'small:trial' was retired")
    assert counted == [("support", "refused")]  # the metric counts the outcome that stood, once
    assert (book.get("support").mode, book.get("support").student) == ("student", "small:old")
    assert [d["outcome"] for d in list_decisions(config, "support")] == [decided.outcome]
    store.close()


def test_the_cli_judges_a_shadow_trial(tmp_path):
    home = tmp_path / "home"
    (home / "adapters" / "smollm2-135m-instruct" / "trial").mkdir(parents=True)
    (home / "adapters" / "smollm2-135m-instruct" / "trial" / "adapter_config.json").write_text("{}")
    env = {"FLYWHEEL_HOME": str(home), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}

    def promote(*args):
        return subprocess.run([sys.executable, "-m", "flywheel.cli", "promote", *args], check=False, text=True,
                              capture_output=True, env=env, timeout=120)

    assert "not in a shadow or canary trial" in promote("--shadow", "--alias", "support").stderr
    refused = promote("--shadow", "--alias", "support", "--adapter", "trial")
    assert refused.returncode != 0 and "not both" in refused.stderr
    neither = promote("--alias", "support")
    assert neither.returncode != 0 and "not both" not in neither.stderr and "--adapter" in neither.stderr
    traffic = subprocess.run([sys.executable, "-m", "flywheel.cli", "traffic", "--alias", "support", "--mode",
                              "shadow", "--candidate", "trial"], check=False, capture_output=True, env=env, timeout=120)
    assert traffic.returncode == 0, traffic.stderr
    store = open_store(f"sqlite:///{home / 'logs.db'}")
    store.write_batch(pair(call("lookup", n=1), call("lookup", n=1), "trial", base="smollm2-135m-instruct"))
    store.close()
    status = subprocess.run([sys.executable, "-m", "flywheel.cli", "status", "--json"], check=False, text=True,
                            capture_output=True, env=env, timeout=120)
    trial = json.loads(status.stdout.strip().splitlines()[-1])["aliases"]["support"]["trial"]
    assert trial == {"pairs": 1, "needed": 50, "judged_by_watcher": False}
    result = promote("--shadow", "--alias", "support", "--json")
    assert result.returncode == 0, result.stderr
    pending = json.loads(result.stdout.strip().splitlines()[-1])
    assert (pending["outcome"], pending["promoted"], pending["route"]["mode"]) == ("pending", False, "shadow")
    assert pending["decision"]["eval_size"] == 1 and pending["decision"]["pending"]
    decided = json.loads(promote("--shadow", "--alias", "support", "--min-pairs", "1", "--json").stdout.splitlines()[-1])
    assert (decided["outcome"], decided["route"]["mode"], decided["route"]["student"]) == (
        "promoted", "student", "smollm2-135m-instruct:trial")
    store = open_store(f"sqlite:///{home / 'logs.db'}")  # now serving: the teacher audits it
    store.write_batch(audited(call("lookup", n=1), call("lookup", n=2), "trial", base="smollm2-135m-instruct"))
    store.close()
    shown = subprocess.run([sys.executable, "-m", "flywheel.cli", "status"], check=False, text=True,
                           capture_output=True, env=env, timeout=120).stdout
    assert "trial audited by the teacher (5%): 1 live pairs, function_name_and_args 0.000" in shown
    assert "warning" not in shown  # no curate.teacher_models: any model without an adapter is a teacher
    strict = tmp_path / "strict.yaml"
    local = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "local.yaml").read_text())
    strict.write_text(yaml.safe_dump({**local, "curate": {"teacher_models": ["gpt-teacher"]},
                                      "gate": {"per_alias": {"support": {"audit_percent": 20}}}}))
    flagged = json.loads(subprocess.run([sys.executable, "-m", "flywheel.cli", "status", "--config", str(strict),
                                         "--json"], check=False, text=True, capture_output=True, env=env,
                                        timeout=120).stdout.splitlines()[-1])["aliases"]["support"]
    assert "smollm2-135m-instruct is not in curate.teacher_models" in flagged["warning"]
    assert flagged["policy"] == {"audit_percent": 20} and flagged["audit"]["percent"] == 20  # its own share

    def decisions(*args):
        return subprocess.run([sys.executable, "-m", "flywheel.cli", "decisions", *args], check=False, text=True,
                              capture_output=True, env=env, timeout=120).stdout

    (recorded,) = json.loads(decisions("--json").splitlines()[-1])["decisions"]  # the pending one was not recorded
    assert (recorded["alias"], recorded["candidate"], recorded["outcome"], recorded["eval_size"]) == (
        "support", "trial", "promoted", 1)
    assert "trial" in decisions("--alias", "support") and "every check passed" in decisions()
    assert "no gate decisions for elsewhere" in decisions("--alias", "elsewhere")

    def audit(*args):
        return subprocess.run([sys.executable, "-m", "flywheel.cli", "audit", *args], check=False, text=True,
                              capture_output=True, env=env, timeout=120)

    kept = json.loads(audit("--alias", "support", "--json").stdout.splitlines()[-1])
    assert (kept["outcome"], kept["adapter"], kept["decision"]["eval_size"]) == ("kept", "trial", 1)
    store = open_store(f"sqlite:///{home / 'logs.db'}")  # wrong answers: clearly short of 0.95, once 10 are in
    for _ in range(8):
        store.write_batch(audited(call("lookup", n=1), call("lookup", n=2), "trial", base="smollm2-135m-instruct"))
    assert json.loads(audit("--alias", "support", "--json").stdout.splitlines()[-1])["outcome"] == "kept"
    store.write_batch(audited(call("lookup", n=1), call("lookup", n=2), "trial", base="smollm2-135m-instruct"))
    store.close()
    demoted = audit("--alias", "support")
    assert demoted.returncode == 0 and "demoted" in demoted.stdout and "is below 95%" in demoted.stdout
    assert "nothing to judge" in audit("--alias", "support").stderr  # the teacher answers it now
    assert [d["outcome"] for d in json.loads(decisions("--json").splitlines()[-1])["decisions"]] == ["demoted",
                                                                                                   "promoted"]


def test_the_watcher_decides_trials_only_when_rollout_is_shadow(trial_config):
    store = open_store(trial_config.store_url)
    book = open_route_book(trial_config)
    book.set_mode("support", "shadow", candidate="trial")
    for _ in range(trial_config.gate.shadow_min_pairs):
        store.write_batch(pair(call("lookup", n=1), call("lookup", n=1), "trial"))
    no_turns = trial_config.model_copy(update={"turn": trial_config.turn.model_copy(update={"min_new_records": 10**6})})

    def no_turn(*args):
        raise AssertionError("no turn is due")

    operator_only = no_turns.model_copy(update={"gate": no_turns.gate.model_copy(update={"rollout": "promote"})})
    assert Watcher(operator_only, store, no_turn).tick() == []
    assert book.get("support").mode == "shadow"  # an operator's trial, left to the operator
    assert Watcher(no_turns, store, no_turn).tick() == []
    assert (book.get("support").mode, book.get("support").student) == ("student", "small:trial")
    store.close()


def test_a_trial_short_of_pairs_is_withdrawn_once_it_outlives_its_time_limit(trial_config):
    limited = trial_config.model_copy(update={"gate": trial_config.gate.model_copy(update={"shadow_max_hours": 1})})
    evidence = {"n": 3, "errors": 0, "metrics": {"function_name_and_args": {"mean": 1.0, "low": 1.0, "high": 1.0}}}
    young = decide_shadow(limited, evidence, "function_name_and_args", "trial", "support", None, time.time() - 600)
    assert young.pending and not young.promote
    old = decide_shadow(limited, evidence, "function_name_and_args", "trial", "support", None, time.time() - 7200)
    assert not old.pending and not old.promote and "in the trial's 1 h limit" in old.reasons[0]
    assert decide_shadow(trial_config, evidence, "function_name_and_args", "trial", "support", None,
                         time.time() - 10**6).pending  # no limit: it waits


def test_a_clear_loser_is_withdrawn_before_min_pairs_and_a_close_one_waits(trial_config):
    store = open_store(trial_config.store_url)
    book = open_route_book(trial_config)
    book.set_mode("support", "shadow", candidate="trial")
    status, wrong = call("get_order_status", order_id="ORD-1"), call("cancel_order", order_id="ORD-1")
    for _ in range(2):
        store.write_batch(pair(status, wrong, "trial"))
    assert gate_shadow(trial_config, book, store, "support").pending  # 2 wrong of 2 could still be luck
    store.write_batch(pair(status, wrong, "trial"))
    early = gate_shadow(trial_config, book, store, "support")
    assert not early.pending and early.outcome == "withdrawn" and early.eval_size == 3  # of the 10 needed
    assert any("withdrawn early" in reason for reason in early.reasons)
    assert (book.get("support").mode, book.get("support").student) == ("teacher", None)
    patient = trial_config.model_copy(update={"gate": trial_config.gate.model_copy(
        update={"shadow_early_withdraw": False})})
    evidence = {"n": 4, "errors": 0, "metrics": {"function_name_and_args": {"mean": 0.0, "low": 0.0, "high": 0.0}}}
    assert decide_shadow(patient, evidence, "function_name_and_args", "trial", "support", None, time.time()).pending
    close = {"n": 9, "errors": 0, "metrics": {"function_name_and_args": {"mean": 0.5, "low": 0.2, "high": 0.8}}}
    assert decide_shadow(trial_config, close, "function_name_and_args", "trial", "support", None, time.time()).pending
    store.close()



def test_with_require_confidence_a_trial_runs_until_it_is_sure_either_way(trial_config):
    """At a 0.9 ratio: perfect answers settle it only once the anytime lower bound passes 0.9
    (150 pairs, not the 10 `shadow_min_pairs` that suffice on the mean); 60%-right ones are
    withdrawn once the upper bound drops below; 85%-right ones wait, until the time limit."""
    gate = trial_config.gate.model_copy(update={"require_confidence": True})
    sure = trial_config.model_copy(update={"gate": gate})

    def verdict(config, n, mean, since=None):
        evidence = {"n": n, "errors": 0, "metrics": {"function_name_and_args": {"mean": mean, "low": 0, "high": 1}}}
        return decide_shadow(config, evidence, "function_name_and_args", "trial", "support", None,
                             since or time.time())

    assert verdict(trial_config, 10, 1.0).promote
    assert verdict(sure, 10, 1.0).pending and verdict(sure, 100, 1.0).pending
    passed = verdict(sure, 150, 1.0)
    assert passed.promote and not passed.pending and "at least 0.917" in passed.reasons[1]
    failed = verdict(sure, 100, 0.6)
    assert not failed.pending and not failed.promote
    assert failed.reasons[-1].startswith("fail: even 0.813")  # not "early": it had its pairs
    assert verdict(sure, 100, 0.85).pending
    limited = sure.model_copy(update={"gate": gate.model_copy(update={"shadow_max_hours": 1})})
    undecided = verdict(limited, 100, 0.85, since=time.time() - 7200)
    assert not undecided.pending and not undecided.promote


def test_a_latency_limit_fails_a_trial_whose_answers_are_too_slow(trial_config):
    """`pair` logs the candidate at 300 ms where the teacher took 900 ms."""
    store = open_store(trial_config.store_url)
    book = open_route_book(trial_config)
    status = call("get_order_status", order_id="ORD-1")

    def trial(ratio: float):
        book.set_mode("support", "shadow", candidate="trial")
        for _ in range(10):
            store.write_batch(pair(status, status, "trial"))
        gate = trial_config.gate.model_copy(update={"shadow_max_latency_ratio": ratio})
        return gate_shadow(trial_config.model_copy(update={"gate": gate}), book, store, "support")

    slow = trial(0.25)
    assert not slow.promote and slow.outcome == "withdrawn" and slow.candidate_score == 1.0
    assert "fail: mean latency 300 ms against the teacher's 900 ms on the same requests (needs <= 0.25x)" in slow.reasons
    quick = trial(0.5)
    assert quick.promote and quick.outcome == "promoted" and quick.eval_size == 10  # this trial's pairs only
    assert book.get("support").student == "small:trial"
    store.close()


def audited(student: dict, teacher: dict | None, adapter: str = "old", base: str = "small",
            **fields) -> list[LogRecord]:
    """A student's answer and the teacher's audit of it (`teacher` None: the audit failed)."""
    primary = answered(student, 100, base_model=base, adapter=adapter, latency_ms=300.0,
                       tags={"mode": "student", "role": "student"}, **fields)
    tags = {"mode": "student", "role": "teacher", "shadow_of": primary.id}
    if teacher is None:
        audit = LogRecord(workload_id="support", client_id="c", model="support", request=REQUEST, base_model="big",
                          status="error", error="HTTP 504: timed out", tags=tags, **fields)
    else:
        audit = answered(teacher, 1000, base_model="big", latency_ms=900.0, tags=tags, **fields)
    return [primary, audit]


def test_audits_measure_a_serving_student_and_demote_it_once_it_clearly_falls_short(trial_config, metrics):
    """At a 0.9 ratio, after 20 right answers: 13 wrong ones leave the anytime upper bound at
    0.901 (kept), the 14th takes it to 0.889 (demoted). Audits from before the student took
    over and failed audits do not count."""
    config = trial_config.model_copy(update={"gate": trial_config.gate.model_copy(update={"rollout": "promote"})})
    store, book = open_store(config.store_url), open_route_book(config)
    status, wrong = call("get_order_status", order_id="ORD-1"), call("cancel_order", order_id="ORD-1")
    store.write_batch(audited(wrong, status, timestamp=time.time() - 60) * 5)  # an earlier student's time
    book.promote("support", "old")
    assert gate_audit(config, book, store, "elsewhere") is None  # no student there
    for _ in range(20):
        store.write_batch(audited(status, status))
    store.write_batch(audited(wrong, None))  # the teacher failed: nothing to compare with
    (teacher, student), *_ = shadow_pairs(store, None, alias="support", since=book.get("support").changed_at
                                          )["small:old"]
    assert (teacher.base_model, teacher.tags["role"], student.adapter) == ("big", "teacher", "old")
    kept = gate_audit(config, book, store, "support")
    assert kept.pending and (kept.eval_size, kept.candidate_score) == (20, 1.0)
    assert metrics[("flywheel_shadow_pairs", "support", "small:old")] == 20
    for _ in range(13):
        store.write_batch(audited(wrong, status))
    assert gate_audit(config, book, store, "support").pending and book.get("support").mode == "student"
    assert list_decisions(config, "support") == []
    store.write_batch(audited(wrong, status))
    demoted = gate_audit(config, book, store, "support")
    assert not demoted.pending and demoted.outcome == "demoted" and demoted.candidate_score == pytest.approx(20 / 34)
    assert demoted.reasons[-1].startswith("fail: function_name_and_args 0.588") and "0.889" in demoted.reasons[-1]
    state = book.get("support")  # the teacher answers; the student stays the incumbent to beat
    assert (state.mode, state.student) == ("teacher", "small:old") and "audit failed" in state.reason
    assert [d["outcome"] for d in list_decisions(config, "support")] == ["demoted"]
    assert gate_audit(config, book, store, "support") is None  # nothing serving to audit
    store.close()


def test_a_student_that_keeps_failing_is_demoted_though_nothing_was_audited(trial_config):
    """A failed answer gets no audit (the teacher answered the client instead), so a
    student whose adapter the engine refuses would never be judged on audits: its share of
    requests answered without failing is judged too. 1 failure in 40 passes; 10 in 10 fail.
    Failures the teacher failed too (the engine was down) do not count against it."""
    store, book = open_store(trial_config.store_url), open_route_book(trial_config)
    status = call("get_order_status", order_id="ORD-1")

    def failed(adapter: str = "old", teacher_ok: bool = True) -> list[LogRecord]:
        attempt = LogRecord(workload_id="support", client_id="c", model="support", request=REQUEST,
                            base_model="small", adapter=adapter, status="error",
                            error=f"HTTP 400: adapter {adapter!r} could not be loaded",
                            tags={"mode": "student", "role": "student"}, timestamp=time.time() - 0.001)
        tags = {"mode": "student", "role": "teacher", "fallback_of": attempt.id}
        rescue = answered(status, 1000, base_model="big", tags=tags) if teacher_ok else LogRecord(
            workload_id="support", client_id="c", model="support", request=REQUEST, base_model="big", status="error",
            error="HTTP 503: unavailable", tags=tags)
        return [attempt, rescue]

    book.promote("support", "old")
    for _ in range(13):
        store.write_batch(audited(status, status))
    store.write_batch(failed() + [answered(status, 100, base_model="small", adapter="old",
                                           tags={"mode": "student", "role": "student"}) for _ in range(26)])
    fine = gate_audit(trial_config, book, store, "support")
    assert fine.pending and "pass: 1 of its newest 40 requests failed" in fine.reasons[-1]

    book.promote("support", "trial")  # an adapter the engine refuses: every request fails
    for _ in range(12):  # while the engine was down: the teacher failed them too
        store.write_batch(failed("trial", teacher_ok=False))
    assert gate_audit(trial_config, book, store, "support").reasons == [
        "info: 0 of the student's live answers audited by the teacher since it began serving; a verdict needs >= 10"]
    for _ in range(9):
        store.write_batch(failed("trial"))
    early = gate_audit(trial_config, book, store, "support")
    assert early.pending and early.reasons[-1].startswith("pending: 9 of its newest 9 requests failed")
    store.write_batch(failed("trial"))
    demoted = gate_audit(trial_config, book, store, "support")
    assert not demoted.pending and demoted.outcome == "demoted" and demoted.eval_size == 0
    assert demoted.reasons[-1].startswith("fail: 10 of its newest 10 requests failed and went to the teacher")
    assert book.get("support").mode == "teacher"
    store.close()


def test_a_canarys_candidate_that_audits_show_clearly_short_is_withdrawn(trial_config):
    store, book = open_store(trial_config.store_url), open_route_book(trial_config)
    status, wrong = call("get_order_status", order_id="ORD-1"), call("cancel_order", order_id="ORD-1")
    book.promote("support", "old")
    book.set_mode("support", "canary", percent=20, candidate="trial")
    for _ in range(3):
        store.write_batch(audited(status, status, "trial"))
        store.write_batch(audited(wrong, status, "old"))  # the student's answers are not the candidate's
    kept = gate_audit(trial_config, book, store, "support")
    assert kept.pending and (kept.candidate, kept.incumbent, kept.eval_size) == ("trial", "old", 3)
    for _ in range(6):  # 3 right of 9: the anytime upper bound is 0.883, below the 0.9 ratio, but
        store.write_batch(audited(wrong, status, "trial"))  # a verdict needs 10 audits
    early = gate_audit(trial_config, book, store, "support")
    assert early.pending and early.reasons[-1].startswith("pending:") and "needs >= 10" in early.reasons[0]
    store.write_batch(audited(wrong, status, "trial"))  # 3 of 10: 0.851
    withdrawn = gate_audit(trial_config, book, store, "support")
    assert not withdrawn.pending and withdrawn.outcome == "withdrawn" and "candidate's live answers" in \
        withdrawn.reasons[0]
    state = book.get("support")
    assert (state.mode, state.student) == ("student", "small:old") and "audit failed" in state.reason
    store.close()


def test_a_canary_trial_is_judged_on_the_teachers_audits_of_its_candidate(trial_config):
    """`gate.rollout: canary`: the candidate answers part of the traffic and the teacher
    audits all of it; the watcher promotes it once `shadow_min_pairs` audits pass (a
    watcher set for shadow trials leaves a canary alone)."""
    store, book = open_store(trial_config.store_url), open_route_book(trial_config)
    status = call("get_order_status", order_id="ORD-1")
    book.promote("support", "old")
    book.set_mode("support", "canary", percent=10, candidate="trial")
    for _ in range(trial_config.gate.shadow_min_pairs):
        store.write_batch(audited(status, status, "trial"))
    store.write_batch(audited(status, None, "old"))  # the student's answers are not the trial's
    turn = trial_config.turn.model_copy(update={"min_new_records": 10**6})

    def watcher(rollout):
        config = trial_config.model_copy(update={"turn": turn, "gate": trial_config.gate.model_copy(
            update={"rollout": rollout})})
        return Watcher(config, store, lambda *args: pytest.fail("no turn is due"))

    assert watcher("shadow").tick() == [] and book.get("support").mode == "canary"
    assert watcher("canary").tick() == []
    state = book.get("support")
    assert (state.mode, state.student) == ("student", "small:trial") and "canary trial passed" in state.reason
    (decision,) = list_decisions(trial_config, "support")
    assert (decision["outcome"], decision["eval_size"], decision["incumbent"]) == ("promoted", 10, "old")
    store.close()


def test_the_watcher_demotes_a_drifted_student_unless_audit_demote_is_off(trial_config):
    store, book = open_store(trial_config.store_url), open_route_book(trial_config)
    book.promote("support", "old")
    for _ in range(trial_config.gate.audit_min_pairs):
        store.write_batch(audited(call("lookup", n=1), call("lookup", n=2)))
    turn = trial_config.turn.model_copy(update={"min_new_records": 10**6})

    def watcher(**gate):
        config = trial_config.model_copy(update={"turn": turn, "gate": trial_config.gate.model_copy(update=gate)})
        return Watcher(config, store, lambda *args: pytest.fail("no turn is due"))

    assert watcher(audit_demote=False).tick() == [] and book.get("support").mode == "student"
    assert watcher(audit_percent=0).tick() == [] and book.get("support").mode == "student"  # no audits asked for
    assert watcher(per_alias={"support": {"audit_demote": False}}).tick() == []  # the alias's own policy
    assert book.get("support").mode == "student"
    assert watcher(rollout="promote").tick() == [] and book.get("support").mode == "teacher"
    store.close()


def test_pairs_of_one_candidate_fetch_only_its_own_linked_answers(tmp_path):
    """Another candidate's shadow names its adapter itself: skipped without a `get`."""
    store = open_store(f"sqlite:///{tmp_path / 'logs.db'}")
    status = call("get_order_status", order_id="ORD-1")
    for adapter in ("trial", "other", "other"):
        store.write_batch(pair(status, status, adapter))
    fetched = []

    class Counting:
        def __getattr__(self, name):
            return getattr(store, name)

        def get(self, record_id):
            fetched.append(record_id)
            return store.get(record_id)

    pairs = shadow_pairs(Counting(), None, candidate="small:trial")
    assert [len(found) for found in pairs.values()] == [1] and len(fetched) == 1
    store.close()


def test_the_shadow_scan_benchmark_finds_the_trials_pairs_both_ways():
    """bench/shadow_scan.py at a small size: both readings must find every pair (it asserts so)."""
    result = subprocess.run([sys.executable, "bench/shadow_scan.py", "--other", "2000", "--pairs", "5", "--repeat", "1"],
                            check=False, text=True, capture_output=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["benchmark"], report["pairs"], len(report["seconds"])) == ("shadow_scan", 5, 2)


def test_the_audit_drift_benchmark_catches_every_drift_without_demoting_good_students():
    """bench/audit_drift.py at a small size (seeded): with the chosen window every drifted
    student is caught after the drift, and a student well above the ratio never is; a
    student wrong half the time is demoted as soon as the floor of audits allows."""
    result = subprocess.run([sys.executable, "bench/audit_drift.py", "--runs", "20", "--before", "300", "--after",
                             "1500", "--audits", "2000"], check=False, text=True, capture_output=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    chosen = report["windows"][str(report["chosen_window"])]
    assert (chosen["demoted_before_drift"], chosen["never_caught"], chosen["false_demotion"]["0.97"]) == (0, 0, 0.0)
    assert chosen["median_audits"] < report["windows"]["all"]["median_audits"]  # why a window: drift shows sooner
    floors = report["min_pairs"]  # a student wrong half the time waits for the floor, not longer
    chosen_floor = floors[str(report["chosen_min_pairs"])]["awful_median_audits"]
    assert floors["1"]["awful_median_audits"] <= chosen_floor and report["chosen_min_pairs"] <= chosen_floor < 20
