"""`SearchLogStore`: logs in an Elasticsearch or OpenSearch index, for clusters.

URLs: `elasticsearch+https://[user:password@]host:9200/<index>` (the official
`elasticsearch` client; an API key from `$FLYWHEEL_STORE_API_KEY`) and
`opensearch+http(s)://[user:password@]host:9200/<index>` (opensearch-py); the index
defaults to `flywheel-logs`. Both share this logic; `flywheel/search_clients.py` holds
the calls whose spelling differs between the clients.

Each document keeps the whole record unindexed (`record`, `enabled: false`: request and
response bodies never explode the mapping) beside the fields filters, sorting and stats
use; an index template carries the mapping to rolled-over indices. `write_batch` is a
bulk `create` keyed on the record id, so a replayed batch or a re-import adds nothing;
`query` pages with `search_after` on (timestamp, id); `partitions` open one point in
time and hand out its slices, so parallel readers see one consistent snapshot (the PIT
expires by itself after `PIT_KEEP_ALIVE` without reads). Erasures' tombstones live in
their own index, `erasures-<index>`. The record is not indexed, so a filter's `contains`
is tested here on each document the rest of the filter selects.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from flywheel.records import Feedback, LogRecord
from flywheel.search_clients import ElasticsearchClient, OpenSearchClient, SearchClient
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

DEFAULT_INDEX = "flywheel-logs"
PIT_KEEP_ALIVE = "5m"
SCAN_PAGE = 1_000
DELETE_CHUNK = 10_000  # ids per delete-by-query (a terms query takes at most 65,536 by default)
KEYWORDS = ("id", "workload_id", "client_id", "model", "status", "day")
MAPPING = {
    "dynamic": False,
    "properties": {**{name: {"type": "keyword"} for name in KEYWORDS},
                   "timestamp": {"type": "double"},
                   "record": {"type": "object", "enabled": False}},
}
TOMBSTONE_MAPPING = {  # erasure entries (Tombstones.from_entries) with an id; only read back whole
    "dynamic": False,
    "properties": {"id": {"type": "keyword"}, "issued_at": {"type": "double"}},
}


def _query(filter: LogFilter) -> dict[str, Any]:
    clauses: list[dict[str, Any]] = [
        {"term": {name: getattr(filter, name)}} for name in NAMING_FIELDS if getattr(filter, name) is not None
    ]
    window = {key: value for key, value in (("gte", filter.since), ("lt", filter.until)) if value is not None}
    if window:
        clauses.append({"range": {"timestamp": window}})
    return {"bool": {"filter": clauses}} if clauses else {"match_all": {}}


def _day(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d")


def _record_json(source: dict[str, Any]) -> str:
    """A document's record as SQLite holds it (`LogRecord.model_dump_json` form)."""
    return json.dumps(source["record"], separators=(",", ":"), ensure_ascii=False)


def _document(record: LogRecord) -> dict[str, Any]:
    return {"id": record.id, "timestamp": record.timestamp, "workload_id": record.workload_id,
            "client_id": record.client_id, "model": record.model, "status": record.status,
            "day": _day(record.timestamp),
            "record": record.model_dump(mode="json")}


class SearchLogStore:
    def __init__(self, url: str, client: SearchClient | None = None):
        """`client` is injected by tests; by default the URL's scheme picks the official client."""
        self.url = url
        flavour, _, rest = url.partition("+")
        parts = urlsplit(rest)
        self.index = parts.path.strip("/") or DEFAULT_INDEX
        if client is None:
            client = ElasticsearchClient(parts) if flavour == "elasticsearch" else OpenSearchClient(parts)
        self._client = client
        self._client.ensure_index(self.index, MAPPING)
        # its own name, outside the `index*` pattern that dashboards read logs through
        self.tombstone_index = f"erasures-{self.index}"
        self._client.ensure_index(self.tombstone_index, TOMBSTONE_MAPPING)
        self._tombstones = Tombstones()  # read by the first write (`_reread_tombstones_if_changed`)

    def write_batch(self, records: Iterable[LogRecord]) -> int:
        """Records the current tombstones cover are left out. After the bulk write, an
        erasure entry added meanwhile (an erasure running in another process) is looked for,
        and the records a new tombstone covers are deleted again: the erasure's own
        delete-by-query may have run before this write was searchable."""
        self._reread_tombstones_if_changed()  # a lift since the last write lets records in again
        kept = self._tombstones.kept(records)
        if not kept:
            return 0
        operations: list[dict[str, Any]] = []
        for record in kept:
            operations += [{"create": {"_index": self.index, "_id": record.id}}, _document(record)]
        created: list[LogRecord] = []
        for item, record in zip(self._client.bulk(operations)["items"], kept, strict=True):
            status = item["create"]["status"]
            if status in (200, 201):
                created.append(record)
            elif status != 409:  # 409: that id is already stored, which is the point
                raise RuntimeError(f"bulk write failed: {item['create'].get('error')}")
        if not self._reread_tombstones_if_changed():
            return len(created)
        late = [record.id for record in created if self._tombstones.covers(record)]
        if late:
            self._client.delete_matching(self.index, {"terms": {"id": late}})
        return len(created) - len(late)

    def _reread_tombstones_if_changed(self) -> bool:
        """One count: erasure entries are only ever added, so a new count means news."""
        if self._client.count(self.tombstone_index, {"match_all": {}}) == self._tombstones.entries:
            return False
        self._tombstones = self._read_tombstones()
        return True

    def get(self, record_id: str) -> LogRecord | None:
        found = self._client.get(self.index, record_id)
        return LogRecord.model_validate(found["_source"]["record"]) if found else None

    def query(self, filter: LogFilter = LogFilter(), order: Literal["asc", "desc"] = "asc",
              limit: int = 100, cursor: str | None = None) -> Page:
        size = limit if filter.contains is None else max(limit, SCAN_PAGE)
        body: dict[str, Any] = {"query": _query(filter), "size": size,
                                "sort": [{"timestamp": order}, {"id": order}]}
        if cursor is not None:
            body["search_after"] = json.loads(cursor)
        records: list[LogRecord] = []
        while True:  # more than one search only when `contains` leaves hits out
            hits = self._client.search(self.index, body)["hits"]["hits"]
            for hit in hits:
                if filter.contains is None or filter.holds(fold(_record_json(hit["_source"]))):
                    records.append(LogRecord.model_validate(hit["_source"]["record"]))
                    if len(records) == limit:
                        return Page(records, json.dumps(hit["sort"]))
            if len(hits) < size:
                return Page(records, None)
            body["search_after"] = hits[-1]["sort"]

    def count(self, filter: LogFilter = LogFilter()) -> int:
        if filter.contains is not None:
            return sum(1 for _ in self._scan_all(filter))
        return self._client.count(self.index, _query(filter))

    def _scan_all(self, filter: LogFilter) -> Iterator[tuple]:
        return self.scan(self.partitions(filter, 1)[0])

    def partitions(self, filter: LogFilter, count: int) -> list[Partition]:
        """Slices of one point in time: together they cover the filtered snapshot once."""
        pit_id = self._client.open_pit(self.index, PIT_KEEP_ALIVE)
        return [Partition(filter, i, count, (pit_id, i, count)) for i in range(count)]

    def scan(self, partition: Partition) -> Iterator[tuple]:
        pit_id, slice_id, slices = partition.bounds
        body: dict[str, Any] = {"query": _query(partition.filter), "size": SCAN_PAGE, "sort": [{"id": "asc"}]}
        if slices > 1:
            body["slice"] = {"id": slice_id, "max": slices}
        while True:
            body["pit"] = {"id": pit_id, "keep_alive": PIT_KEEP_ALIVE}
            page = self._client.search(None, body)
            hits = page["hits"]["hits"]
            for hit in hits:
                source, text = hit["_source"], _record_json(hit["_source"])
                if partition.filter.contains is None or partition.filter.holds(fold(text)):
                    yield (*(source[field] for field in SCAN_FIELDS[:-1]), text)
            if len(hits) < SCAN_PAGE:
                return
            pit_id = page.get("pit_id", pit_id)  # the engine may hand back a new id
            body["search_after"] = hits[-1]["sort"]

    def add_feedback(self, record_id: str, feedback: Feedback) -> bool:
        for _ in range(5):  # optimistic concurrency: retry when another writer got there first
            found = self._client.get(self.index, record_id)
            if found is None:
                return False
            record = LogRecord.model_validate(found["_source"]["record"])
            record.feedback.append(feedback)
            if self._client.replace_if_unchanged(self.index, record_id, _document(record),
                                                 found["_seq_no"], found["_primary_term"]):
                return True
        raise RuntimeError(f"feedback on {record_id}: too many concurrent updates")

    def stats(self, filter: LogFilter = LogFilter()) -> dict:
        fields = {"by_workload": "workload_id", "by_model": "model", "by_status": "status", "by_day": "day"}
        if filter.contains is not None:
            return self._scanned_stats(filter, fields)
        body = {"size": 0, "query": _query(filter), "track_total_hits": True,
                "aggs": {name: {"terms": {"field": field, "size": 10_000}} for name, field in fields.items()}}
        result = self._client.search(self.index, body)
        stats: dict[str, Any] = {"total": result["hits"]["total"]["value"]}
        for name in fields:
            buckets = result["aggregations"][name]["buckets"]
            stats[name] = dict(sorted((bucket["key"], bucket["doc_count"]) for bucket in buckets))
        return stats

    def _scanned_stats(self, filter: LogFilter, fields: dict[str, str]) -> dict:
        """`stats` counted from the documents themselves (what `contains` needs)."""
        counts: dict[str, Counter] = {name: Counter() for name in fields}
        for row in self._scan_all(filter):
            found = dict(zip(SCAN_FIELDS, row, strict=True))
            found["day"] = _day(found["timestamp"])
            for name, field in fields.items():
                counts[name][found[field]] += 1
        return {"total": sum(counts["by_status"].values()),
                **{name: dict(sorted(counted.items())) for name, counted in counts.items()}}

    def _read_tombstones(self) -> Tombstones:
        entries: list[dict[str, Any]] = []
        body: dict[str, Any] = {"query": {"match_all": {}}, "size": SCAN_PAGE,
                                "sort": [{"issued_at": "asc"}, {"id": "asc"}]}
        while True:
            hits = self._client.search(self.tombstone_index, body)["hits"]["hits"]
            entries += [hit["_source"] for hit in hits]
            if len(hits) < SCAN_PAGE:
                return Tombstones.from_entries(entries)
            body["search_after"] = hits[-1]["sort"]

    def tombstones(self) -> list[Tombstone]:
        return self._read_tombstones().all

    def lift(self, tombstone_id: str) -> bool:
        """The lift is appended, then the lifted entry is overwritten with only its time and
        id: what it named (a person's email) is not kept once it guards nothing."""
        lifted = {tombstone.id: tombstone for tombstone in self.tombstones()}.get(tombstone_id)
        if lifted is None:
            return False
        self._append_erasure_entry(lift_entry(tombstone_id))
        [item] = self._client.bulk([{"index": {"_index": self.tombstone_index, "_id": tombstone_id}},
                                    {"id": tombstone_id, **lifted_entry(lifted)}])["items"]
        if item["index"]["status"] not in (200, 201):
            raise RuntimeError(f"lifted, but could not blank the erasure's criteria: {item['index'].get('error')}")
        return True

    def _append_erasure_entry(self, entry: dict[str, Any]) -> None:
        entry = {"id": uuid.uuid4().hex, **entry}
        [item] = self._client.bulk([{"create": {"_index": self.tombstone_index, "_id": entry["id"]}}, entry])["items"]
        if item["create"]["status"] not in (200, 201):
            raise RuntimeError(f"could not record the erasure: {item['create'].get('error')}")

    def delete(self, filter: LogFilter, remember: bool = True) -> int:
        """The tombstone is searchable before the delete-by-query starts (see `write_batch`)."""
        if remember and filter.names_records:
            self._append_erasure_entry(Tombstone(filter, time.time()).as_dict())
        if filter.contains is None:
            return self._client.delete_matching(self.index, _query(filter))
        ids = [row[0] for row in self._scan_all(filter)]
        return sum(self._client.delete_matching(self.index, {"terms": {"id": ids[start:start + DELETE_CHUNK]}})
                   for start in range(0, len(ids), DELETE_CHUNK))

    def close(self) -> None:
        self._client.close()
