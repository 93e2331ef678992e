"""Turn orchestration with the stages stubbed (the real stages run in
tests/integration/test_turn.py): records, resume, cancel, exclusivity, and the watcher's
trigger logic."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flywheel import turn as turn_module
from flywheel.config import FlywheelConfig, TurnConfig
from flywheel.datasets import write_dataset
from flywheel.records import LogRecord
from flywheel.store import open_store
from flywheel.turn import run_turn
from flywheel.turns import STAGES, RunBook, TurnBusy
from flywheel.watch import RECOUNT_S, RETAIN_EVERY_S, Watcher, WorkloadView, due


@pytest.fixture
def config(tmp_path):
    return FlywheelConfig.model_validate({"home": str(tmp_path), "serve": {"models": [{"name": "small", "source": "x"}]},
                                          "turn": {"min_new_records": 10, "max_concurrent": 2}})


class Stages:
    """Stand-ins for the four stages: record calls, fail or block on request."""

    def __init__(self):
        self.calls, self.fail, self.gate = [], set(), None

    def install(self, monkeypatch):
        def make(name):
            def run(config, record, report):
                report(f"{name} working")
                self.calls.append(name)  # after the report: a test that sees the call may read the progress
                if self.gate is not None and name == "train":
                    self.gate.wait(10)
                if name in self.fail:
                    raise RuntimeError(f"{name} broke")
                return {"curate": {"dataset_id": "d1"}, "train": {"adapters": ["a1"]},
                        "evaluate": {"report_id": "r1", "report": {"candidates": {}}},
                        "gate": {"promoted": True, "decision": {"promote": True, "reasons": ["pass"]}}}[name]
            return run

        monkeypatch.setattr(turn_module, "RUNNERS", {name: make(name) for name in STAGES})
        return self


def test_a_turn_runs_every_stage_and_records_it(config, monkeypatch):
    stages = Stages().install(monkeypatch)
    seen = []
    record = run_turn(config, "support", options={"max_steps": 3}, progress=lambda stage, text: seen.append(stage))
    assert record.status == "succeeded" and stages.calls == list(STAGES)
    assert record.stages["curate"].artifacts == {"dataset_id": "d1"} and record.decision["promote"]
    assert all(stage.seconds is not None and stage.status == "succeeded" for stage in record.stages.values())
    assert RunBook(config.turns_dir).get(record.run_id).summary() == record.summary()
    assert record.options == {"max_steps": 3} and set(seen) == set(STAGES)


def test_a_failed_turn_resumes_from_its_failed_stage_and_a_done_one_does_not_run_again(config, monkeypatch):
    stages = Stages().install(monkeypatch)
    stages.fail = {"evaluate"}
    failed = run_turn(config, "support", run_id="support-run-1")
    assert failed.status == "failed" and failed.stage == "evaluate" and "evaluate broke" in failed.error
    assert failed.stages["evaluate"].status == "failed" and failed.stages["gate"].status == "pending"
    stages.fail, stages.calls = set(), []
    resumed = run_turn(config, run_id="support-run-1")
    assert resumed.status == "succeeded" and stages.calls == ["evaluate", "gate"]
    again = run_turn(config, run_id="support-run-1")
    assert again.status == "succeeded" and stages.calls == ["evaluate", "gate"]  # not run twice
    with pytest.raises(ValueError, match="not 'other'"):
        run_turn(config, "other", run_id="support-run-1")


def test_a_running_turn_holds_its_run_and_workload(config, monkeypatch):
    stages = Stages().install(monkeypatch)
    stages.gate = threading.Event()
    book = RunBook(config.turns_dir)
    worker = threading.Thread(target=run_turn, args=(config, "support", "support-run-2"))
    worker.start()
    deadline = time.monotonic() + 5
    while "train" not in stages.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert book.running("support-run-2") and book.get("support-run-2").status == "running"
    assert book.get("support-run-2").stages["train"].progress == "train working"
    with pytest.raises(TurnBusy, match="is running"):
        run_turn(config, run_id="support-run-2")
    with pytest.raises(TurnBusy, match="a turn of workload 'support' is running"):
        run_turn(config, "support")
    book.cancel("support-run-2")  # stops before its next stage
    stages.gate.set()
    worker.join(10)
    record = book.get("support-run-2")
    assert record.status == "cancelled" and stages.calls == ["curate", "train"] and not book.running("support-run-2")


def test_a_pending_run_cancels_at_once_and_bad_names_are_refused(config):
    book = RunBook(config.turns_dir)
    assert book.cancel(book.create("support").run_id).status == "cancelled"
    with pytest.raises(ValueError):
        book.create("../etc")
    with pytest.raises(ValueError):
        book.get("../../x")


def view(workload, new, last=None, running=False):
    return WorkloadView(workload, new, last, running)


def test_due_starts_on_enough_records_or_on_schedule_one_per_workload_within_the_limit():
    settings = TurnConfig(min_new_records=100, interval_s=3600, max_concurrent=2)
    now = 10_000.0
    assert due(settings, [view("a", 150), view("b", 99), view("c", 500, running=True)], 0, now) == [
        ("a", "150 new records (>= 100)")]
    on_schedule = due(settings, [view("a", 5, last=now - 4000), view("b", 5, last=now - 100), view("c", 0, now - 9e3)],
                      0, now)
    assert [workload for workload, _ in on_schedule] == ["a"] and "since the last turn" in on_schedule[0][1]
    many = [view(name, 1000 + i) for i, name in enumerate("abcd")]
    assert [w for w, _ in due(settings, many, 0, now)] == ["d", "c"]  # most new records first, limit 2
    assert due(settings, many, 2, now) == []  # the limit counts turns already running
    assert due(TurnConfig(min_new_records=100), [view("a", 50, last=0)], 0, now) == []  # no schedule set


def test_watcher_starts_due_and_queued_turns_and_counts_records_since_the_last_turn(config, tmp_path):
    store = open_store(config.store_url)
    store.write_batch([LogRecord(workload_id=w, client_id="c", model="small", request={}, timestamp=time.time() - 60)
                       for w in ["support"] * 12 + ["tiny"] * 3])
    started = []

    def fake_turn(cfg, workload, run_id, options):
        started.append((workload, run_id, options))
        book = RunBook(cfg.turns_dir)
        record = book.get(run_id)
        record.status = "succeeded"
        return book.save(record)

    watcher = Watcher(config, store, fake_turn)
    queued = RunBook(config.turns_dir).create("tiny", {"max_steps": 2})  # POST /v1/flywheel/runs
    ran = watcher.tick()
    for thread in watcher.threads.values():
        thread.join(5)
    assert [(w, options) for w, _, options in started] == [
        ("tiny", {"max_steps": 2}), ("support", {"trigger": "12 new records (>= 10)"})]
    assert ran[0] == queued.run_id
    assert {v.workload: v.new_records for v in watcher.views()} == {"support": 0, "tiny": 0}  # since their turns
    assert watcher.tick() == []
    store.close()


def test_a_workload_no_turn_can_have_is_skipped_with_one_warning_and_the_others_still_turn(config, caplog):
    """Records under a name that cannot be a folder (imported, or logged before the ingress
    refused such ids) used to fail every tick at the run's creation, so no workload after it
    started and no trial was judged."""
    store = open_store(config.store_url)
    names = ["..", "x" * 101, "support"]
    store.write_batch([LogRecord(workload_id=w, client_id="c", model="small", request={}, timestamp=time.time() - 60)
                       for w in names for _ in range(12)])
    started = []

    def fake_turn(cfg, workload, run_id, options):
        started.append(workload)
        book = RunBook(cfg.turns_dir)
        record = book.get(run_id)
        record.status = "succeeded"
        book.save(record)

    watcher = Watcher(config, store, fake_turn)
    with caplog.at_level("WARNING", logger="flywheel.watch"):
        watcher.tick()
        for thread in watcher.threads.values():
            thread.join(5)
        watcher.tick()
    assert started == ["support"]
    warned = [record.getMessage() for record in caplog.records if "never turns" in record.getMessage()]
    assert len(warned) == 2 and "'..'" in warned[0] and "at most 100 characters" in warned[1]
    store.close()


class ScanCounter:
    """The store, counting the rows its bulk scan hands out."""

    def __init__(self, store):
        self.store, self.rows = store, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def scan(self, partition):
        for row in self.store.scan(partition):
            self.rows += 1
            yield row


def test_a_workload_may_turn_on_its_own_thresholds():
    """`turn.per_workload`: `chat` waits for 50 new answers where the others need 10, and
    `faq` also turns an hour after its last turn; the watcher's knobs are not per workload."""
    settings = TurnConfig(min_new_records=10, per_workload={"chat": {"min_new_records": 50},
                                                            "faq": {"interval_s": 3600}})
    views = [WorkloadView("chat", 20, 0.0, False), WorkloadView("faq", 3, 0.0, False),
             WorkloadView("other", 12, 0.0, False)]
    assert [workload for workload, _ in due(settings.model_copy(update={"max_concurrent": 3}), views, 0, 4000.0)
            ] == ["other", "faq"]
    assert settings.for_workload("chat").min_new_records == 50 and settings.for_workload(None) is settings
    with pytest.raises(ValueError, match="per_workload.chat: poll_s cannot differ per entry"):
        TurnConfig(per_workload={"chat": {"poll_s": 1}})
    with pytest.raises(ValueError, match="per_workload.chat: min_new_records"):
        TurnConfig(per_workload={"chat": {"min_new_records": 0}})


def test_the_watcher_counts_answers_to_learn_from_not_a_serving_students_own(config):
    """After a promotion most of a workload's records are the student's: they must not start
    turns (the turn would learn nothing new); the teacher's audits of them must count."""
    store = ScanCounter(open_store(config.store_url))

    def logged(age_s, count, **fields):
        store.write_batch([LogRecord(workload_id="support", client_id="c", model="support", request={},
                                     timestamp=time.time() - age_s, **fields) for _ in range(count)])

    logged(3600, 3, base_model="small")  # the teacher answering
    logged(3600, 20, base_model="small", adapter="s1", tags={"role": "student"})
    logged(3600, 1, base_model="small", tags={"role": "teacher", "shadow_of": "x"})  # auditing a student
    logged(3600, 1, base_model="small", adapter="s2", tags={"role": "candidate", "shadow_of": "y"})
    logged(3600, 1, base_model="small", status="error", error="HTTP 500")
    watcher = Watcher(config, store, lambda *args: pytest.fail("no turn is due"))
    assert [(v.workload, v.new_records) for v in watcher.views()] == [("support", 4)]
    assert store.rows == 25  # every successful record, read once

    logged(5, 2, base_model="small", tags={"role": "teacher", "shadow_of": "z"})
    logged(5, 30, base_model="small", adapter="s1", tags={"role": "student"})
    store.rows = 0
    assert watcher.views()[0].new_records == 6 and watcher.tick() == []  # 6 < min_new_records 10
    assert store.rows == 2 * 32  # each look reads only the last minute's records, not the hour's
    logged(3000, 1, base_model="small")  # replayed from a spool long after it was answered: found by the recount
    now = time.time()
    assert watcher.views(now=now)[0].new_records == 6 and watcher.views(now=now + RECOUNT_S)[0].new_records == 7
    strict = config.model_copy(update={"curate": config.curate.model_copy(update={"teacher_models": ["big"]})})
    assert Watcher(strict, store, None).views()[0].new_records == 0  # `small` is not a teacher here
    store.close()


def test_the_watcher_deletes_records_past_the_retention_period_once_an_hour(config):
    store = open_store(config.store_url)
    now = time.time()

    def logged(age_days):
        record = LogRecord(workload_id="support", client_id="c", model="small", request={},
                           timestamp=now - age_days * 86400)
        store.write_batch([record])
        return record.id

    ids = [logged(age_days) for age_days in (0, 6, 8)]
    messages = json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    rows = [{"id": row_id, "label": "a", "source": "teacher", "tools": "[]", "messages": messages} for row_id in ids]
    dataset = write_dataset(config.datasets_dir, "support", {"train": rows, "val": [], "eval": [], "icl": []},
                            {"prefix": None}, {"train": 3}, [])
    forever = Watcher(config, store, lambda *args: pytest.fail("no turn is due"))
    assert forever.retain(now) == 0 and store.count() == 3  # no retention_days: kept
    week = config.model_copy(update={"store": config.store.model_copy(update={"retention_days": 7})})
    watcher = Watcher(week, store, lambda *args: pytest.fail("no turn is due"))
    assert watcher.tick(now) == [] and store.count() == 2  # the tick applied it
    assert [row["id"] for row in dataset.rows("train")] == sorted(ids[:2])  # to the dataset made from it too
    assert store.tombstones() == []  # a tombstone an hour would pile up; the next pass removes a late record
    logged(9)
    assert watcher.retain(now + RETAIN_EVERY_S - 1) == 0 and store.count() == 3  # not again within the hour
    with RunBook(config.turns_dir).workload_idle("support"):  # a turn of it curates: the next pass, then
        assert watcher.retain(now + RETAIN_EVERY_S) == 0 and store.count() == 3
    assert watcher.retain(now + 2 * RETAIN_EVERY_S) == 1 and store.count() == 2
    store.close()


def test_the_watch_scan_benchmark_counts_every_audit():
    """bench/watch_scan.py at a small size: each reading must find what was written (it asserts so)."""
    result = subprocess.run([sys.executable, "bench/watch_scan.py", "--records", "2000", "--recent", "40",
                             "--repeat", "1"], check=False, text=True, capture_output=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["benchmark"], report["records"], report["audits"], len(report["seconds"])) == (
        "watch_scan", 2040, 102, 4)
