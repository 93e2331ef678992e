"""Getting log records into the store off the hot path, losing none.

Requests hand records to `LogWriter.submit` (a queue put: no I/O, never raises). A
background thread writes them in batches (by size or time). When the store fails, the
batch goes to an append-only spool on local disk (one file per batch, fsynced, renamed
into place) and spooled batches are replayed oldest first once the store answers again.
Stores skip ids they already hold, so a replay interrupted between write and delete is
harmless: every record lands exactly once. `close()` flushes what is queued.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from flywheel import telemetry
from flywheel.records import LogRecord
from flywheel.store import LogStore

logger = logging.getLogger(__name__)
_STOP = object()


def spooled_batches(spool_dir: Path) -> int:
    """How many batches a writer with this spool has not got into the store yet."""
    return len(list(Path(spool_dir).glob("*.jsonl")))


class LogWriter:
    def __init__(self, open_store: Callable[[], LogStore], spool_dir: Path, batch_size: int = 256,
                 flush_interval_s: float = 0.2, retry_interval_s: float = 1.0):
        self._open_store = open_store
        self._store: LogStore | None = None
        self._spool = Path(spool_dir)
        self._spool.mkdir(parents=True, exist_ok=True)
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._retry_interval_s = retry_interval_s
        self._retry_at = 0.0
        self._sequence = itertools.count()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="flywheel-log-writer", daemon=True)
        self._thread.start()

    def submit(self, record: LogRecord) -> None:
        self._queue.put(record)

    def close(self, timeout_s: float = 30) -> None:
        """Write (or spool) everything submitted so far, then stop."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        if self._store is not None:
            self._store.close()
            self._store = None

    def spooled(self) -> int:
        """Batches waiting on disk for the store to come back."""
        return spooled_batches(self._spool)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = self._next_batch()
            if batch:
                self._deliver(batch)
            elif time.monotonic() >= self._retry_at:
                self._replay()
        self._replay()  # last chance before stopping; what still fails stays spooled

    def _next_batch(self) -> tuple[list[LogRecord], bool]:
        batch: list[LogRecord] = []
        deadline = time.monotonic() + self._flush_interval_s
        while len(batch) < self._batch_size:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _deliver(self, batch: list[LogRecord]) -> None:
        if time.monotonic() >= self._retry_at and self._replay():  # order: older batches first
            try:
                self._connected().write_batch(batch)
                telemetry.log_writer_state(0, time.time() - batch[0].timestamp)
                return
            except Exception as error:
                self._store_failed(error)
        self._write_spool(batch)
        telemetry.log_writer_state(self.spooled(), None)

    def _connected(self) -> LogStore:
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def _store_failed(self, error: Exception) -> None:
        logger.warning("log store unavailable (%s); spooling to %s", error, self._spool)
        self._store = None
        self._retry_at = time.monotonic() + self._retry_interval_s

    def _replay(self) -> bool:
        """Replay spooled batches oldest first; True when the spool is empty."""
        for path in sorted(self._spool.glob("*.jsonl")):
            try:
                records = [LogRecord.model_validate_json(line) for line in path.read_text().splitlines() if line]
                self._connected().write_batch(records)
            except FileNotFoundError:  # another replica replayed it first
                continue
            except Exception as error:
                self._store_failed(error)
                return False
            path.unlink(missing_ok=True)
        return True

    def _write_spool(self, batch: list[LogRecord]) -> None:
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._sequence):06d}"
        staging = self._spool / f"{name}.tmp"
        with open(staging, "w", encoding="utf-8") as handle:
            handle.writelines(record.model_dump_json() + "\n" for record in batch)
            handle.flush()
            os.fsync(handle.fileno())
        staging.rename(self._spool / f"{name}.jsonl")
