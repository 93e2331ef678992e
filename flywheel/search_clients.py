"""The few calls the search-engine log store makes, for each official client.

Elasticsearch (`elasticsearch`, 9.x) and OpenSearch (`opensearch-py`) speak the same
query language but their clients differ in keyword names (`operations=` vs `body=`),
in how a 404 is tolerated, and in point-in-time endpoints (`_pit` vs
`_search/point_in_time`). `SearchLogStore` holds all the logic and talks to one of these.
"""

from __future__ import annotations

import os
from typing import Any, Protocol
from urllib.parse import SplitResult

API_KEY_ENV = "FLYWHEEL_STORE_API_KEY"


class SearchClient(Protocol):
    def ensure_index(self, index: str, mappings: dict[str, Any]) -> None:
        """An index template for `index*` (so rolled-over indices get the mapping) and the index."""

    def bulk(self, operations: list[dict[str, Any]]) -> dict[str, Any]: ...

    def get(self, index: str, doc_id: str) -> dict[str, Any] | None:
        """The document with `_source`, `_seq_no`, `_primary_term`; None when missing."""

    def search(self, index: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """`index` is None for point-in-time searches (the PIT names the index)."""

    def count(self, index: str, query: dict[str, Any]) -> int: ...

    def replace_if_unchanged(self, index: str, doc_id: str, document: dict[str, Any],
                             seq_no: int, primary_term: int) -> bool:
        """Optimistic write; False when someone else changed the document first."""

    def open_pit(self, index: str, keep_alive: str) -> str:
        """A point in time; it closes itself after `keep_alive` without searches."""

    def delete_matching(self, index: str, query: dict[str, Any]) -> int:
        """Delete by query, visible to the next search; how many were deleted."""

    def close(self) -> None: ...


def _credentials(parts: SplitResult) -> tuple[str, tuple[str, str] | None]:
    """The host URL without user info, and (user, password) when the URL carried them."""
    host = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    auth = (parts.username, parts.password or "") if parts.username else None
    return host, auth


class ElasticsearchClient:
    def __init__(self, parts: SplitResult, client: Any = None):
        if client is None:
            from elasticsearch import Elasticsearch

            host, auth = _credentials(parts)
            client = Elasticsearch(host, basic_auth=auth, api_key=os.environ.get(API_KEY_ENV), request_timeout=60)
        self._client = client

    def ensure_index(self, index: str, mappings: dict[str, Any]) -> None:
        self._client.indices.put_index_template(name=index, index_patterns=[f"{index}*"],
                                                template={"mappings": mappings})
        if not self._client.indices.exists(index=index):
            self._client.options(ignore_status=400).indices.create(index=index, mappings=mappings)

    def bulk(self, operations: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(self._client.bulk(operations=operations, refresh="wait_for"))

    def get(self, index: str, doc_id: str) -> dict[str, Any] | None:
        found = self._client.options(ignore_status=404).get(index=index, id=doc_id)
        return dict(found) if found.get("found") else None

    def search(self, index: str | None, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._client.search(index=index, **body))

    def count(self, index: str, query: dict[str, Any]) -> int:
        return self._client.count(index=index, query=query)["count"]

    def replace_if_unchanged(self, index: str, doc_id: str, document: dict[str, Any],
                             seq_no: int, primary_term: int) -> bool:
        result = self._client.options(ignore_status=409).index(
            index=index, id=doc_id, document=document, if_seq_no=seq_no, if_primary_term=primary_term,
            refresh="wait_for")
        return result.meta.status != 409

    def open_pit(self, index: str, keep_alive: str) -> str:
        return self._client.open_point_in_time(index=index, keep_alive=keep_alive)["id"]

    def delete_matching(self, index: str, query: dict[str, Any]) -> int:
        return self._client.delete_by_query(index=index, query=query, refresh=True, conflicts="proceed")["deleted"]

    def close(self) -> None:
        self._client.close()


class OpenSearchClient:
    def __init__(self, parts: SplitResult, client: Any = None):
        if client is None:
            from opensearchpy import OpenSearch

            host, auth = _credentials(parts)
            client = OpenSearch(hosts=[host], http_auth=auth, timeout=60)
        self._client = client

    def ensure_index(self, index: str, mappings: dict[str, Any]) -> None:
        self._client.indices.put_index_template(
            name=index, body={"index_patterns": [f"{index}*"], "template": {"mappings": mappings}})
        if not self._client.indices.exists(index=index):
            self._client.indices.create(index=index, body={"mappings": mappings}, ignore=400)

    def bulk(self, operations: list[dict[str, Any]]) -> dict[str, Any]:
        return self._client.bulk(body=operations, refresh="wait_for")

    def get(self, index: str, doc_id: str) -> dict[str, Any] | None:
        found = self._client.get(index=index, id=doc_id, ignore=404)
        return found if found.get("found") else None

    def search(self, index: str | None, body: dict[str, Any]) -> dict[str, Any]:
        return self._client.search(index=index, body=body)

    def count(self, index: str, query: dict[str, Any]) -> int:
        return self._client.count(index=index, body={"query": query})["count"]

    def replace_if_unchanged(self, index: str, doc_id: str, document: dict[str, Any],
                             seq_no: int, primary_term: int) -> bool:
        result = self._client.index(index=index, id=doc_id, body=document, if_seq_no=seq_no,
                                    if_primary_term=primary_term, refresh="wait_for", ignore=409)
        return result.get("status") != 409

    def open_pit(self, index: str, keep_alive: str) -> str:
        return self._client.create_pit(index=index, params={"keep_alive": keep_alive})["pit_id"]

    def delete_matching(self, index: str, query: dict[str, Any]) -> int:
        return self._client.delete_by_query(index=index, body={"query": query}, refresh=True,
                                            conflicts="proceed")["deleted"]

    def close(self) -> None:
        self._client.close()
