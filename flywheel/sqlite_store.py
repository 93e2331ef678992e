"""`SqliteLogStore`: the embedded default log store — one file, WAL, safe across processes.

Each record is stored whole as JSON beside the columns that filters and ordering use
(indexed on workload_id + timestamp). Writes are `INSERT OR IGNORE` in one transaction
per batch, so replaying a batch or re-importing a file never duplicates a record.
Erasures' tombstones are a table of their own in the same file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from flywheel.records import Feedback, LogRecord
from flywheel.store import (
    NAMING_FIELDS,
    SCAN_FIELDS,
    LogFilter,
    Page,
    Partition,
    Tombstone,
    Tombstones,
    fold,
    lift_entry,
    lifted_entry,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    workload_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_workload_ts ON logs (workload_id, ts, id);
CREATE INDEX IF NOT EXISTS logs_ts ON logs (ts, id);
CREATE TABLE IF NOT EXISTS tombstones (entry TEXT NOT NULL);  -- JSON, rows only added: Tombstones.from_entries
"""


SCAN_COLUMNS = [{"timestamp": "ts"}.get(field, field) for field in SCAN_FIELDS]


def _holds(record: str, *needles: str) -> bool:
    """`LogFilter.contains` in SQL: SQLite's own `lower()` folds ASCII letters only."""
    text = fold(record)
    return any(needle in text for needle in needles)


def _where(filter: LogFilter) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for column in NAMING_FIELDS:
        value = getattr(filter, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if filter.since is not None:
        clauses.append("ts >= ?")
        params.append(filter.since)
    if filter.until is not None:
        clauses.append("ts < ?")
        params.append(filter.until)
    if filter.contains is not None:  # no index can help: it reads every record the other clauses leave
        clauses.append(f"flywheel_holds(record, {', '.join('?' * len(filter.needles))})")
        params += filter.needles
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class SqliteLogStore:
    def __init__(self, path: Path, busy_timeout_s: float = 60):
        self.path = Path(path).resolve()
        self.url = f"sqlite://{self.path}" + (f"?timeout={busy_timeout_s:g}" if busy_timeout_s != 60 else "")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None)
        self._use_wal(busy_timeout_s)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA secure_delete=ON")  # a deleted record's bytes are overwritten, not just unlinked
        self._db.executescript(SCHEMA)
        self._db.create_function("flywheel_holds", -1, _holds, deterministic=True)
        self._tombstones = Tombstones()

    def _use_wal(self, busy_timeout_s: float) -> None:
        """Put the file in WAL mode (it stays so). Switching needs the file to itself, and
        SQLite answers "database is locked" at once, without waiting the busy timeout, while
        another process opens or switches the same new file: retry until it is done."""
        deadline = time.monotonic() + busy_timeout_s
        while True:
            try:
                if self._db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                    return
                self._db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """A write transaction that takes the file's lock at once; the caller holds `_lock`."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def write_batch(self, records: Iterable[LogRecord]) -> int:
        """Tombstones are read in the write's own transaction: an erasure (one transaction
        too) either comes first and its tombstone drops these records, or comes after and
        deletes them."""
        rows = [(r, (r.id, r.timestamp, r.workload_id, r.client_id, r.model, r.status, r.model_dump_json()))
                for r in records]
        with self._lock:
            before = self._db.total_changes
            with self._transaction():
                tombstones = self._current_tombstones()
                self._db.executemany("INSERT OR IGNORE INTO logs VALUES (?, ?, ?, ?, ?, ?, ?)",
                                     [row for record, row in rows if not tombstones.covers(record, row[6])])
            return self._db.total_changes - before

    def get(self, record_id: str) -> LogRecord | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM logs WHERE id = ?", (record_id,)).fetchone()
        return LogRecord.model_validate_json(row[0]) if row else None

    def query(self, filter: LogFilter = LogFilter(), order: Literal["asc", "desc"] = "asc",
              limit: int = 100, cursor: str | None = None) -> Page:
        where, params = _where(filter)
        if cursor is not None:
            ts, _, last_id = cursor.partition("|")
            where += (" AND " if where else " WHERE ") + f"(ts, id) {'>' if order == 'asc' else '<'} (?, ?)"
            params += [float(ts), last_id]
        direction = "ASC" if order == "asc" else "DESC"
        sql = f"SELECT ts, id, record FROM logs{where} ORDER BY ts {direction}, id {direction} LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, [*params, limit]).fetchall()
        records = [LogRecord.model_validate_json(row[2]) for row in rows]
        next_cursor = f"{rows[-1][0]!r}|{rows[-1][1]}" if len(rows) == limit else None
        return Page(records, next_cursor)

    def count(self, filter: LogFilter = LogFilter()) -> int:
        where, params = _where(filter)
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM logs{where}", params).fetchone()[0]

    def partitions(self, filter: LogFilter, count: int) -> list[Partition]:
        """Contiguous rowid ranges of (about) equal width that cover the table as it is now:
        rows written later (higher rowids) are not in any partition."""
        with self._lock:
            low, high = self._db.execute("SELECT MIN(rowid), MAX(rowid) FROM logs").fetchone()
        if low is None:
            return [Partition(filter, 0, 1, (0, 0))]
        width = -(-(high - low + 1) // count)
        return [Partition(filter, i, count, (low + i * width, min(low + (i + 1) * width, high + 1)))
                for i in range(count)]

    def scan(self, partition: Partition) -> Iterator[tuple]:
        where, params = _where(partition.filter)
        where += (" AND " if where else " WHERE ") + "rowid >= ? AND rowid < ?"
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(SCAN_COLUMNS)} FROM logs{where} ORDER BY rowid",
                                    [*params, *partition.bounds]).fetchall()
        yield from rows

    def add_feedback(self, record_id: str, feedback: Feedback) -> bool:
        with self._lock, self._transaction():  # read-modify-write, safe against other processes
            row = self._db.execute("SELECT record FROM logs WHERE id = ?", (record_id,)).fetchone()
            if row is None:
                return False
            record = LogRecord.model_validate_json(row[0])
            record.feedback.append(feedback)
            self._db.execute("UPDATE logs SET record = ? WHERE id = ?", (record.model_dump_json(), record_id))
            return True

    def stats(self, filter: LogFilter = LogFilter()) -> dict:
        where, params = _where(filter)
        groups = {"by_workload": "workload_id", "by_model": "model", "by_status": "status",
                  "by_day": "date(ts, 'unixepoch')"}
        with self._lock:
            result = {"total": self._db.execute(f"SELECT COUNT(*) FROM logs{where}", params).fetchone()[0]}
            for name, column in groups.items():
                rows = self._db.execute(f"SELECT {column}, COUNT(*) FROM logs{where} GROUP BY 1 ORDER BY 1", params)
                result[name] = dict(rows.fetchall())
        return result

    def _current_tombstones(self) -> Tombstones:
        """Reread only when another connection added an entry (entries are never removed)."""
        if self._db.execute("SELECT COUNT(*) FROM tombstones").fetchone()[0] != self._tombstones.entries:
            self._tombstones = self._read_tombstones()
        return self._tombstones

    def _read_tombstones(self) -> Tombstones:
        rows = self._db.execute("SELECT rowid, entry FROM tombstones ORDER BY rowid").fetchall()
        return Tombstones.from_entries({**json.loads(entry), "id": str(rowid)} for rowid, entry in rows)

    def tombstones(self) -> list[Tombstone]:
        with self._lock:
            return self._read_tombstones().all

    def lift(self, tombstone_id: str) -> bool:
        """The lift is appended, and the lifted entry keeps only its time: what it named
        (a person's email) is not kept once it guards nothing."""
        with self._lock:
            with self._transaction():
                lifted = {tombstone.id: tombstone for tombstone in self._read_tombstones().all}.get(tombstone_id)
                if lifted is None:
                    return False
                self._db.execute("INSERT INTO tombstones VALUES (?)", (json.dumps(lift_entry(tombstone_id)),))
                self._db.execute("UPDATE tombstones SET entry = ? WHERE rowid = ?",
                                 (json.dumps(lifted_entry(lifted)), int(tombstone_id)))
            self._checkpoint()
            return True

    def delete(self, filter: LogFilter, remember: bool = True) -> int:
        where, params = _where(filter)
        with self._lock:
            with self._transaction():
                if remember and filter.names_records:
                    self._db.execute("INSERT INTO tombstones VALUES (?)",
                                     (json.dumps(Tombstone(filter, time.time()).as_dict()),))
                deleted = self._db.execute(f"DELETE FROM logs{where}", params).rowcount
            self._checkpoint()
            return deleted

    def _checkpoint(self) -> None:
        """The WAL still holds earlier copies of the pages a delete or lift rewrote: move
        what it has into the file (whose freed pages secure_delete zeroed) and empty it; a
        reader that holds an old snapshot keeps that from finishing until the next one."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            self._db.close()
