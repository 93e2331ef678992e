"""Logging in the running service, and reading logs back with Ray Data.

The outage is real: another process takes SQLite's write lock on the service's log store,
so the replica's writes fail (after the store's 1 s busy timeout), batches go to the spool
on disk, and are replayed once the lock is released."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid

import httpx
import pytest

from flywheel.records import LogRecord
from flywheel.store import LogFilter, open_store

pytestmark = pytest.mark.integration


def _send_until(service, workload: str, stop: threading.Event, log_ids: list[str], failures: list[str]) -> None:
    body = {"model": "support-router", "max_tokens": 2, "temperature": 0,
            "messages": [{"role": "user", "content": "Say hi."}]}
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            response = client.post(f"{service.base_url}/chat/completions", json=body,
                                   headers={"X-Workload-Id": workload})
            if response.status_code == 200:
                log_ids.append(response.headers["X-Flywheel-Log-Id"])
            else:
                failures.append(f"{response.status_code}: {response.text[:200]}")


def _wait_for_answers(log_ids: list[str], failures: list[str], count: int, when: str) -> None:
    """Traffic on both sides of the outage, however slow the machine answers."""
    deadline = time.monotonic() + 120
    while len(log_ids) < count and not failures:
        if time.monotonic() > deadline:
            pytest.fail(f"only {len(log_ids)} of {count} answers {when} within 120 s")
        time.sleep(0.1)


def test_store_outage_mid_traffic_loses_nothing(service):
    workload = f"outage-{uuid.uuid4().hex[:8]}"
    spool = service.home / "spool"
    stop, log_ids, failures = threading.Event(), [], []
    clients = [threading.Thread(target=_send_until, args=(service, workload, stop, log_ids, failures))
               for _ in range(2)]
    for client in clients:
        client.start()
    try:
        _wait_for_answers(log_ids, failures, 3, "before the outage")
        locker = sqlite3.connect(service.home / "logs.db", isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # the store is unavailable to writers from here
        deadline = time.monotonic() + 60
        while not list(spool.glob("*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.1)
        spooled_during_outage = len(list(spool.glob("*.jsonl")))
        _wait_for_answers(log_ids, failures, len(log_ids) + 3, "during the outage")
        locker.execute("COMMIT")  # the store is back
        locker.close()
        _wait_for_answers(log_ids, failures, len(log_ids) + 3, "after the outage")
    finally:
        stop.set()
        for client in clients:
            client.join(60)
    assert not failures, failures[:3]
    assert spooled_during_outage > 0, "the outage never sent a batch to the spool"

    store = open_store(service.store_url)
    try:
        deadline = time.monotonic() + 30
        while store.count(LogFilter(workload_id=workload)) < len(log_ids) and time.monotonic() < deadline:
            time.sleep(0.25)
        stored = [record.id for record in store.query(LogFilter(workload_id=workload), limit=100_000).records]
    finally:
        store.close()
    assert sorted(stored) == sorted(log_ids)  # every answered request once: none lost, none twice
    assert not list(spool.glob("*.jsonl"))


def _records(workload: str, n: int) -> list[LogRecord]:
    return [LogRecord(timestamp=1_760_000_000 + i, workload_id=workload if i % 3 else "other", client_id="bulk",
                      model="teacher", request={"messages": [{"role": "user", "content": f"q{i}"}]},
                      response={"choices": [{"message": {"role": "assistant", "content": f"a{i}"}}]})
            for i in range(n)]


def _assert_read_back(url: str, workload: str, expected: list[LogRecord]) -> None:
    from flywheel.log_dataset import read_logs

    dataset = read_logs(url, LogFilter(workload_id=workload), parallelism=3).materialize()
    rows = dataset.take_all()
    assert dataset.num_blocks() >= 3  # three read tasks, one per partition
    assert sorted(row["id"] for row in rows) == sorted(r.id for r in expected if r.workload_id == workload)
    by_id = {record.id: record for record in expected}
    assert all(LogRecord.model_validate_json(row["record"]) == by_id[row["id"]] for row in rows)
    assert {row["workload_id"] for row in rows} == {workload}


def test_read_logs_reads_the_service_sqlite_store_in_parallel(service, ray_cluster):
    workload = f"bulk-{uuid.uuid4().hex[:8]}"
    records = _records(workload, 3_000)
    store = open_store(service.store_url)
    store.write_batch(records)
    store.close()
    _assert_read_back(service.store_url, workload, records)


def test_read_logs_reads_an_opensearch_store_in_parallel(search_server, ray_cluster):
    workload = "bulk"
    url = search_server.replace("http://", "opensearch+http://").rstrip("/") + f"/logs-{uuid.uuid4().hex[:8]}"
    records = _records(workload, 2_500)
    store = open_store(url)
    store.write_batch(records)
    store.close()
    _assert_read_back(url, workload, records)
