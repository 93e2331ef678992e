"""Run the official Elasticsearch 9 client against osmem-server (OpenSearch-compatible).

No Elasticsearch server can run here (ENVIRONMENT.md). The ES 9 client always sends
`compatible-with=9` media types, which OpenSearch rejects, and Elasticsearch spells the
point-in-time endpoint `_pit` where OpenSearch has `_search/point_in_time`. This
transport node rewrites just those two things on the wire, so the real client and
`ElasticsearchClient` run every other call unchanged against a real search engine.
Against a real Elasticsearch, set FLYWHEEL_ES_URL instead: no rewriting then.
"""

from __future__ import annotations

import json

from elastic_transport import Urllib3HttpNode
from elastic_transport._node import NodeApiResponse


class OpenSearchDialectNode(Urllib3HttpNode):
    def perform_request(self, method, target, body=None, headers=None, **kwargs):
        headers = headers.copy() if headers is not None else None
        for name in ("accept", "content-type"):
            if headers is not None and name in headers:
                headers[name] = "application/x-ndjson" if "ndjson" in headers[name] else "application/json"
        path, _, query = target.partition("?")
        if method == "POST" and path.endswith("/_pit"):  # open a point in time
            target = path.removesuffix("_pit") + "_search/point_in_time" + (f"?{query}" if query else "")
            response = super().perform_request(method, target, body, headers, **kwargs)
            opened = json.loads(response.body)
            return NodeApiResponse(response.meta, json.dumps({"id": opened["pit_id"]}).encode())
        return super().perform_request(method, target, body, headers, **kwargs)
