"""Zero loss: the store goes away mid-traffic, records spool to disk, the store comes
back, and every record is present exactly once, in a real SQLite store."""

import threading
import time

import pytest

from flywheel.log_writer import LogWriter
from flywheel.records import LogRecord
from flywheel.store import LogFilter, open_store


class Outage:
    """Opens the real store, except while `down` is set (then opening and writing fail),
    standing in for a store server that is unreachable."""

    def __init__(self, url):
        self.url, self.down = url, threading.Event()

    def open(self):
        if self.down.is_set():
            raise ConnectionError("store unreachable")
        store = open_store(self.url)
        outage = self

        class Guarded:
            def write_batch(self, records):
                if outage.down.is_set():
                    raise ConnectionError("store unreachable")
                return store.write_batch(records)

            def close(self):
                store.close()

        return Guarded()


def record(i):
    return LogRecord(workload_id="w", client_id="c", model="m", request={"messages": [{"role": "user", "content": str(i)}]})


def wait_for(condition, timeout_s=10):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'logs.db'}"


def test_records_survive_an_outage_exactly_once(tmp_path, url):
    outage = Outage(url)
    writer = LogWriter(outage.open, tmp_path / "spool", batch_size=16, flush_interval_s=0.05, retry_interval_s=0.1)
    sent = [record(i) for i in range(300)]
    for r in sent[:100]:
        writer.submit(r)
    assert wait_for(lambda: open_store(url).count() == 100)

    outage.down.set()
    for r in sent[100:200]:
        writer.submit(r)
    assert wait_for(lambda: writer.spooled() > 0)
    time.sleep(0.3)
    assert open_store(url).count() == 100  # nothing reached the store while it was down

    outage.down.clear()
    for r in sent[200:]:
        writer.submit(r)
    writer.close()
    store = open_store(url)
    assert store.count() == 300
    assert writer.spooled() == 0
    stored = {r.id for page in [store.query(limit=1000)] for r in page.records}
    assert stored == {r.id for r in sent}


def test_close_spools_what_cannot_be_written_and_a_new_writer_replays_it(tmp_path, url):
    outage = Outage(url)
    outage.down.set()
    writer = LogWriter(outage.open, tmp_path / "spool", flush_interval_s=0.05)
    for i in range(40):
        writer.submit(record(i))
    writer.close()
    assert writer.spooled() >= 1 and not (tmp_path / "logs.db").exists()

    outage.down.clear()  # e.g. the replica restarted and the store is back
    replayer = LogWriter(outage.open, tmp_path / "spool", flush_interval_s=0.05)
    assert wait_for(lambda: replayer.spooled() == 0)
    replayer.close()
    assert open_store(url).count() == 40


def test_a_replay_repeated_after_a_crash_adds_nothing(tmp_path, url):
    """Crash between writing a spooled batch and deleting its file: the next replay
    writes it again, and the store keeps one copy."""
    spool = tmp_path / "spool"
    outage = Outage(url)
    outage.down.set()
    writer = LogWriter(outage.open, spool, flush_interval_s=0.05)
    for i in range(10):
        writer.submit(record(i))
    writer.close()
    (batch,) = list(spool.glob("*.jsonl"))
    copy = batch.read_text()
    outage.down.clear()
    LogWriter(outage.open, spool, flush_interval_s=0.05).close()
    (spool / batch.name).write_text(copy)  # the file "survived" the crash
    LogWriter(outage.open, spool, flush_interval_s=0.05).close()
    assert open_store(url).count() == 10


def test_records_spooled_before_an_erasure_are_not_replayed_into_the_store(tmp_path, url):
    """A client asks to be forgotten while its records wait in a replica's spool (the
    store was down for the replica, not for the erasure): the replay must drop them."""
    outage = Outage(url)
    outage.down.set()
    writer = LogWriter(outage.open, tmp_path / "spool", flush_interval_s=0.05)
    for i in range(20):
        writer.submit(record(i).model_copy(update={"client_id": "gone" if i % 2 else "kept"}))
    writer.close()
    assert writer.spooled() >= 1

    store = open_store(url)
    assert store.delete(LogFilter(client_id="gone")) == 0  # nothing stored yet: only the tombstone
    outage.down.clear()
    replayer = LogWriter(outage.open, tmp_path / "spool", flush_interval_s=0.05)
    replayer.submit(record(99).model_copy(update={"client_id": "gone"}))  # arrived after the erasure
    replayer.close()
    assert replayer.spooled() == 0
    assert store.stats()["total"] == 11 and store.count(LogFilter(client_id="kept")) == 10
    assert [r.request["messages"][0]["content"] for r in store.query(LogFilter(client_id="gone")).records] == ["99"]
    store.close()
