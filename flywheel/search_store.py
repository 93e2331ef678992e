"""`SearchLogStore`: logs in an OpenSearch index (opensearch-py), for clusters.

URL: `opensearch+http://host:9200/<index>` (`https` too; default index `flywheel-logs`).
Each document keeps the whole record unindexed (`record`, `enabled: false`: request and
response bodies never explode the mapping) beside the fields filters, sorting and stats
use. `write_batch` is a bulk `create` keyed on the record id, so a replayed batch or a
re-import adds nothing; `query` pages with `search_after` on (timestamp, id); partitions
are slices of a sliced scroll. The Elasticsearch backend ([S2], next) shares this logic
with the official client.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from flywheel.records import Feedback, LogRecord
from flywheel.store import LogFilter, Page, Partition

DEFAULT_INDEX = "flywheel-logs"
KEYWORDS = ("id", "workload_id", "client_id", "model", "status", "day")
MAPPING = {
    "dynamic": False,
    "properties": {**{name: {"type": "keyword"} for name in KEYWORDS},
                   "timestamp": {"type": "double"},
                   "record": {"type": "object", "enabled": False}},
}


def _query(filter: LogFilter) -> dict[str, Any]:
    clauses: list[dict[str, Any]] = [
        {"term": {name: getattr(filter, name)}}
        for name in ("workload_id", "client_id", "model", "status") if getattr(filter, name) is not None
    ]
    window = {key: value for key, value in (("gte", filter.since), ("lt", filter.until)) if value is not None}
    if window:
        clauses.append({"range": {"timestamp": window}})
    return {"bool": {"filter": clauses}} if clauses else {"match_all": {}}


def _document(record: LogRecord) -> dict[str, Any]:
    day = datetime.fromtimestamp(record.timestamp, tz=UTC).strftime("%Y-%m-%d")
    return {"id": record.id, "timestamp": record.timestamp, "workload_id": record.workload_id,
            "client_id": record.client_id, "model": record.model, "status": record.status, "day": day,
            "record": record.model_dump(mode="json")}


class SearchLogStore:
    def __init__(self, url: str, client: Any = None):
        parts = urlsplit(url.split("+", 1)[1] if "+" in url.split("://")[0] else url)
        self.index = parts.path.strip("/") or DEFAULT_INDEX
        if client is None:
            from opensearchpy import OpenSearch

            client = OpenSearch(hosts=[f"{parts.scheme}://{parts.netloc}"], timeout=60)
        self._client = client
        if not self._client.indices.exists(index=self.index):
            self._client.indices.create(index=self.index, body={"mappings": MAPPING}, ignore=400)

    def write_batch(self, records: Iterable[LogRecord]) -> int:
        lines = []
        for record in records:
            lines.append(json.dumps({"create": {"_index": self.index, "_id": record.id}}))
            lines.append(json.dumps(_document(record)))
        if not lines:
            return 0
        result = self._client.bulk(body="\n".join(lines) + "\n", refresh="wait_for")
        created = 0
        for item in result["items"]:
            status = item["create"]["status"]
            if status in (200, 201):
                created += 1
            elif status != 409:  # 409: that id is already stored, which is the point
                raise RuntimeError(f"bulk write failed: {item['create'].get('error')}")
        return created

    def get(self, record_id: str) -> LogRecord | None:
        found = self._client.get(index=self.index, id=record_id, ignore=404)
        return LogRecord.model_validate(found["_source"]["record"]) if found.get("found") else None

    def query(self, filter: LogFilter = LogFilter(), order: Literal["asc", "desc"] = "asc",
              limit: int = 100, cursor: str | None = None) -> Page:
        body: dict[str, Any] = {"query": _query(filter), "size": limit,
                                "sort": [{"timestamp": order}, {"id": order}]}
        if cursor is not None:
            body["search_after"] = json.loads(cursor)
        hits = self._client.search(index=self.index, body=body)["hits"]["hits"]
        records = [LogRecord.model_validate(hit["_source"]["record"]) for hit in hits]
        next_cursor = json.dumps(hits[-1]["sort"]) if len(hits) == limit else None
        return Page(records, next_cursor)

    def count(self, filter: LogFilter = LogFilter()) -> int:
        return self._client.count(index=self.index, body={"query": _query(filter)})["count"]

    def partitions(self, filter: LogFilter, count: int) -> list[Partition]:
        return [Partition(filter, i, count, (i, count)) for i in range(count)]

    def scan(self, partition: Partition) -> Iterator[LogRecord]:
        slice_id, slices = partition.bounds
        body: dict[str, Any] = {"query": _query(partition.filter), "size": 1_000, "sort": ["_doc"]}
        if slices > 1:
            body["slice"] = {"id": slice_id, "max": slices}
        page = self._client.search(index=self.index, body=body, scroll="2m")
        scroll_id = page.get("_scroll_id")
        try:
            while page["hits"]["hits"]:
                for hit in page["hits"]["hits"]:
                    yield LogRecord.model_validate(hit["_source"]["record"])
                page = self._client.scroll(scroll_id=scroll_id, scroll="2m")
                scroll_id = page.get("_scroll_id", scroll_id)
        finally:
            if scroll_id:
                self._client.clear_scroll(scroll_id=scroll_id, ignore=404)

    def add_feedback(self, record_id: str, feedback: Feedback) -> bool:
        for _ in range(5):  # optimistic concurrency: retry when another writer got there first
            found = self._client.get(index=self.index, id=record_id, ignore=404)
            if not found.get("found"):
                return False
            record = LogRecord.model_validate(found["_source"]["record"])
            record.feedback.append(feedback)
            result = self._client.index(index=self.index, id=record_id, body=_document(record), refresh="wait_for",
                                        if_seq_no=found["_seq_no"], if_primary_term=found["_primary_term"],
                                        ignore=409)
            if result.get("status") != 409:
                return True
        raise RuntimeError(f"feedback on {record_id}: too many concurrent updates")

    def stats(self, filter: LogFilter = LogFilter()) -> dict:
        fields = {"by_workload": "workload_id", "by_model": "model", "by_status": "status", "by_day": "day"}
        body = {"size": 0, "query": _query(filter), "track_total_hits": True,
                "aggs": {name: {"terms": {"field": field, "size": 10_000}} for name, field in fields.items()}}
        result = self._client.search(index=self.index, body=body)
        stats: dict[str, Any] = {"total": result["hits"]["total"]["value"]}
        for name in fields:
            buckets = result["aggregations"][name]["buckets"]
            stats[name] = dict(sorted((bucket["key"], bucket["doc_count"]) for bucket in buckets))
        return stats

    def close(self) -> None:
        self._client.close()
