"""The log-store Protocol and `open_store(url)`.

Backends are chosen by URL scheme: `sqlite:///path/logs.db[?timeout=S]` (the embedded
default, `flywheel/sqlite_store.py`; `timeout`: how long a write waits for another
process's lock, default 60 s, before it fails and the log writer spools), `elasticsearch+https://host:9200/index` and
`opensearch+http(s)://host:9200/index` (`flywheel/search_store.py`). `read_logs`
(`flywheel/log_dataset.py`) turns any of them into a Ray Dataset.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import parse_qsl

import ahocorasick

from flywheel.records import Feedback, LogRecord

SCAN_FIELDS = ("id", "timestamp", "workload_id", "client_id", "model", "status", "record")
NAMING_FIELDS = ("workload_id", "client_id", "model", "status")  # LogFilter fields that name whose records


_ESCAPED_CHAR = re.compile(r"\\u([0-9a-f]{4})")  # `\u00dc` in a JSON string (after lower-casing)


def _lower_escaped(match: re.Match) -> str:
    lowered = chr(int(match[1], 16)).lower()
    return f"\\u{ord(lowered):04x}" if len(lowered) == 1 else match[0]


def fold(text: str) -> str:
    """Lower case for every script (Python's `str.lower`: Ü as ü, Σ as σ), and for a letter
    written as a JSON escape too (`\\u00dc` as `\\u00fc`, as tool-call arguments may hold
    it). The SQLite store calls this same function, so every backend matches
    `LogFilter.contains` alike."""
    text = text.lower()
    return _ESCAPED_CHAR.sub(_lower_escaped, text) if "\\u" in text else text


def _escaped(text: str) -> str:
    """`text` as it stands within a JSON string."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def record_text(record: LogRecord) -> str:
    """What `LogFilter.contains` is looked for in: the record's stored JSON, folded."""
    return fold(record.model_dump_json())


@dataclass(frozen=True)
class LogFilter:
    """Which records: every field that is set must match; times are epoch seconds."""

    workload_id: str | None = None
    client_id: str | None = None
    model: str | None = None
    status: Literal["ok", "error"] | None = None
    since: float | None = None
    until: float | None = None
    # texts (a person's email, phone, name): a record holding any of them anywhere in its
    # stored JSON, letters in any case; one text may be given as a string
    contains: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.contains is not None:
            texts = (self.contains,) if isinstance(self.contains, str) else tuple(self.contains)
            if not texts or "" in texts:
                raise ValueError("`contains` must not be empty: it would match every record")
            object.__setattr__(self, "contains", texts)  # a list read back from JSON compares equal too

    @property
    def names_records(self) -> bool:
        """Whether it names whose records (a workload, client, model, status or a text), not only an age."""
        return self.contains is not None or any(getattr(self, name) is not None for name in NAMING_FIELDS)

    @cached_property
    def needles(self) -> tuple[str, ...]:
        """`contains` as the texts appear in a record's JSON, folded: what is looked for in
        `record_text`. In a string, quotes, backslashes and newlines are escaped; in a JSON
        string within it (tool-call arguments) they are escaped twice, and other non-ASCII
        characters may be too (`\\u00fc`, as `json.dumps` writes by default)."""
        forms = []
        for text in self.contains or ():
            once = _escaped(text)
            forms += [once, _escaped(once), _escaped(json.dumps(text)[1:-1])]
        return tuple(dict.fromkeys(fold(form) for form in forms))  # most texts have one form

    def holds(self, text: str) -> bool:
        """The `contains` test on a record's `record_text`."""
        return self.contains is None or any(needle in text for needle in self.needles)

    def criteria(self) -> dict:
        """The fields that are set."""
        return {name: value for name, value in asdict(self).items() if value is not None}

    def matches(self, record: LogRecord, text: str | None = None) -> bool:
        """The test the backends' queries make, on a record in hand; `text`: its
        `record_text`, when the caller has it already."""
        return ((self.workload_id is None or record.workload_id == self.workload_id)
                and (self.client_id is None or record.client_id == self.client_id)
                and (self.model is None or record.model == self.model)
                and (self.status is None or record.status == self.status)
                and (self.since is None or record.timestamp >= self.since)
                and (self.until is None or record.timestamp < self.until)
                and (self.contains is None or self.holds(record_text(record) if text is None else text)))


@dataclass(frozen=True)
class Tombstone:
    """A remembered erasure: a record it covers that reaches the store afterwards (queued
    in a replica, spooled while the store was down, re-imported from a backup) is dropped
    instead of stored. Records that arrive after the erasure are not covered."""

    filter: LogFilter
    issued_at: float
    id: str = ""  # the store's own, once stored: what `LogStore.lift` takes

    def covers(self, record: LogRecord, text: str | None = None) -> bool:
        return record.timestamp < self.issued_at and self.filter.matches(record, text)

    def as_dict(self) -> dict:
        """The flat form backends store: `issued_at` and the filter's fields."""
        return {"issued_at": self.issued_at, **asdict(self.filter)}

    def describe(self) -> dict:
        """What `flywheel logs erasures` and the API show: when, and the criteria that were set."""
        return {"id": self.id, "issued_at": self.issued_at, "filter": self.filter.criteria()}

    @classmethod
    def from_dict(cls, stored: dict) -> Tombstone:
        return cls(LogFilter(**{name: stored.get(name) for name in LogFilter.__dataclass_fields__}),
                   stored["issued_at"], stored.get("id", ""))


def lift_entry(tombstone_id: str) -> dict:
    """What a store adds to forget a tombstone (erasure entries are only ever added, so
    their count tells a writer whether its cached tombstones are still current)."""
    return {"lifts": tombstone_id, "issued_at": time.time()}


def lifted_entry(tombstone: Tombstone) -> dict:
    """What a store keeps of a lifted tombstone in its place: its time, not its criteria."""
    return {"issued_at": tombstone.issued_at}


class Tombstones:
    """Every tombstone of a store, looked up by the client or workload it names (the usual
    erasures) or else by its text (one Aho-Corasick pass over a record finds every such
    text it holds), so checking a record costs about the same with thousands of them. A
    record newer than every erasure (live traffic) is not looked up at all. `entries`: how
    many erasure entries (tombstones and lifts) they were read from."""

    def __init__(self, tombstones: Iterable[Tombstone] = (), entries: int = 0):
        self.all = list(tombstones)
        self.entries = entries
        self._newest = max((tombstone.issued_at for tombstone in self.all), default=-float("inf"))
        self._by_client: dict[str, list[Tombstone]] = {}
        self._by_workload: dict[str, list[Tombstone]] = {}
        self._rest: list[Tombstone] = []
        by_text: dict[str, list[Tombstone]] = {}
        for tombstone in self.all:
            if tombstone.filter.client_id is not None:
                self._by_client.setdefault(tombstone.filter.client_id, []).append(tombstone)
            elif tombstone.filter.workload_id is not None:
                self._by_workload.setdefault(tombstone.filter.workload_id, []).append(tombstone)
            elif tombstone.filter.contains is not None:
                for needle in tombstone.filter.needles:
                    by_text.setdefault(needle, []).append(tombstone)
            else:
                self._rest.append(tombstone)
        self._texts: ahocorasick.Automaton | None = None
        if by_text:
            self._texts = ahocorasick.Automaton()
            for needle, named in by_text.items():
                self._texts.add_word(needle, named)
            self._texts.make_automaton()

    @classmethod
    def from_entries(cls, entries: Iterable[dict]) -> Tombstones:
        """The tombstones a store's erasure entries leave in force, oldest first: each entry
        is a tombstone (`Tombstone.as_dict()` and its `id`) or a `lift_entry`."""
        entries = list(entries)
        lifted = {entry["lifts"] for entry in entries if "lifts" in entry}
        return cls([Tombstone.from_dict(entry) for entry in entries if "lifts" not in entry and entry["id"] not in lifted],
                   len(entries))

    def covers(self, record: LogRecord, dumped: str | None = None) -> bool:
        """`dumped`: `record.model_dump_json()`, when the caller made it already."""
        if record.timestamp >= self._newest:
            return False
        def text_of() -> str:  # the record's JSON, made once, if a tombstone that names a text gets that far
            return record_text(record) if dumped is None else fold(dumped)

        named = (*self._by_client.get(record.client_id, ()), *self._by_workload.get(record.workload_id, ()))
        text = None
        for tombstone in (*named, *self._rest):
            if text is None and tombstone.filter.contains is not None and record.timestamp < tombstone.issued_at:
                text = text_of()
            if tombstone.covers(record, text):
                return True
        if self._texts is None:
            return False
        text = text_of() if text is None else text
        return any(tombstone.covers(record, text) for _, found in self._texts.iter(text) for tombstone in found)

    def kept(self, records: Iterable[LogRecord]) -> list[LogRecord]:
        return [record for record in records if not self.covers(record)] if self.all else list(records)


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
        """Store records; ids already present, and records a tombstone covers, are skipped.
        Returns how many were stored."""

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

    def delete(self, filter: LogFilter, remember: bool = True) -> int:
        """Remove the records the filter matches (retention, a client's erasure request);
        how many were removed. With `remember`, a filter that `names_records` is also kept
        as a `Tombstone`, so none of those records comes back later. Retention remembers
        nothing: its next pass removes a late record, and a tombstone an hour would pile up."""

    def tombstones(self) -> list[Tombstone]:
        """The erasures this store remembers, oldest first."""

    def lift(self, tombstone_id: str) -> bool:
        """Forget one erasure (a mistaken one): records it covered may be stored again. False
        when no tombstone in force has that id."""

    def close(self) -> None: ...


def every_record(store: LogStore, filter: LogFilter = LogFilter(), order: Literal["asc", "desc"] = "asc",
                 page_size: int = 1_000) -> Iterator[LogRecord]:
    """Every record `filter` matches, in `query`'s order, read a page at a time as the caller
    goes: stopping early reads no further page."""
    cursor = None
    while True:
        page = store.query(filter, order=order, limit=page_size, cursor=cursor)
        yield from page.records
        if page.cursor is None:
            return
        cursor = page.cursor


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
