"""The log-store Protocol and `open_store(url)`.

Backends are chosen by URL scheme: `sqlite:///path/logs.db[?timeout=S]` (the embedded
default, `flywheel/sqlite_store.py`; `timeout`: how long a write waits for another
process's lock, default 60 s, before it fails and the log writer spools), `elasticsearch+https://host:9200/index` and
`opensearch+http(s)://host:9200/index` (`flywheel/search_store.py`). `read_logs`
(`flywheel/log_dataset.py`) turns any of them into a Ray Dataset.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import parse_qsl

from flywheel.records import Feedback, LogRecord

SCAN_FIELDS = ("id", "timestamp", "workload_id", "client_id", "model", "status", "record")


@dataclass(frozen=True)
class LogFilter:
    """Which records: every field that is set must match; times are epoch seconds."""

    workload_id: str | None = None
    client_id: str | None = None
    model: str | None = None
    status: Literal["ok", "error"] | None = None
    since: float | None = None
    until: float | None = None


@dataclass(frozen=True)
class Page:
    records: list[LogRecord]
    cursor: str | None  # pass back to `query` for the next page; None at the end


@dataclass(frozen=True)
class Partition:
    """A slice of a filtered scan that one reader can fetch independently of the others;
    `bounds` is the backend's own (a rowid range for SQLite)."""

    filter: LogFilter
    index: int
    count: int
    bounds: tuple = ()


class LogStore(Protocol):
    url: str  # reopens this store elsewhere (Ray Data read tasks)

    def write_batch(self, records: Iterable[LogRecord]) -> int:
        """Store records; ids already present are skipped. Returns how many were new."""

    def get(self, record_id: str) -> LogRecord | None: ...

    def query(self, filter: LogFilter = LogFilter(), order: Literal["asc", "desc"] = "asc",
              limit: int = 100, cursor: str | None = None) -> Page:
        """Records in (timestamp, id) order, a page at a time."""

    def count(self, filter: LogFilter = LogFilter()) -> int: ...

    def partitions(self, filter: LogFilter, count: int) -> list[Partition]:
        """Split a filtered scan into `count` disjoint slices that together cover it."""

    def scan(self, partition: Partition) -> Iterator[tuple]:
        """The bulk read path: one `SCAN_FIELDS` tuple per record of the partition, the
        record itself as unvalidated JSON (`LogRecord.model_dump_json` form), so readers
        parse only what they use."""

    def add_feedback(self, record_id: str, feedback: Feedback) -> bool:
        """Attach feedback; False when no record has that id."""

    def stats(self, filter: LogFilter = LogFilter()) -> dict:
        """`total`, and name -> count maps `by_workload`, `by_model`, `by_status`, `by_day` (UTC)."""

    def delete(self, filter: LogFilter) -> int:
        """Remove the records the filter matches (retention, a client's erasure request);
        how many were removed."""

    def close(self) -> None: ...


SEARCH_SCHEMES = ("elasticsearch+http", "elasticsearch+https", "opensearch+http", "opensearch+https")


def open_store(url: str) -> LogStore:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"store url {url!r} has no scheme; expected e.g. sqlite:///path/logs.db")
    if scheme == "sqlite":
        from flywheel.sqlite_store import SqliteLogStore

        path, _, query = rest.partition("?")
        options = dict(parse_qsl(query))
        try:
            busy_timeout_s = float(options.pop("timeout", 60))
        except ValueError:
            raise ValueError(f"store url {url!r}: timeout must be a number of seconds") from None
        if options:
            raise ValueError(f"store url {url!r}: unknown option(s) {', '.join(options)} (supported: timeout)")
        return SqliteLogStore(Path(path), busy_timeout_s)
    if scheme in SEARCH_SCHEMES:
        from flywheel.search_store import SearchLogStore

        return SearchLogStore(url)
    raise ValueError(f"store url {url!r}: unsupported scheme {scheme!r} "
                     f"(supported: sqlite, {', '.join(SEARCH_SCHEMES)})")
