"""Which requests the service logs, and the `LogRecord` each one becomes.

`begin` runs before the engine is called (decides sampling/opt-out, fixes the record id
that the response will carry); `finish` builds the record and hands it to the sink —
`LogWriter.submit` in production: a queue put, so nothing here waits on the store.
Credentials never reach a record: headers are not logged and credential-like body keys
are dropped.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ulid import ULID

from flywheel import telemetry
from flywheel.config import LoggingConfig
from flywheel.records import LogRecord
from serve.routing import Route

logger = logging.getLogger("ray.serve")
CREDENTIAL_KEYS = {"api_key", "apikey", "api-key", "authorization", "token", "access_token", "password"}


@dataclass
class Pending:
    id: str
    arrived: float
    started: float
    workload_id: str
    client_id: str
    request: dict[str, Any]
    route: Route
    tags: dict[str, str] = field(default_factory=dict)


def requested_workload(headers: Mapping[str, str], body: dict[str, Any]) -> str | None:
    """The workload a request names: its X-Workload-Id header, else `metadata.workload_id`."""
    metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    named = headers.get("x-workload-id") or metadata.get("workload_id")
    return str(named) if named else None


class InferenceLog:
    def __init__(self, config: LoggingConfig, sink: Callable[[LogRecord], None],
                 on_student_tokens: Callable[[str, int], None] = lambda workload, tokens: None):
        """`on_student_tokens(workload, tokens)` counts what adapters answered (savings)."""
        self.config = config
        self.sink = sink
        self.on_student_tokens = on_student_tokens

    def begin(self, headers: Mapping[str, str], body: dict[str, Any], route: Route,
              tags: dict[str, str] | None = None, workload: str | None = None, force: bool = False) -> Pending | None:
        """`workload` is the default when the request names none (an alias names its
        workload); `force` skips sampling (a shadow is logged whenever its primary is)."""
        metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        workload = requested_workload(headers, body) or workload or self.config.default_workload
        client = headers.get("x-client-id") or metadata.get("client_id") or self.config.default_client
        if workload in self.config.exclude_workloads or (not force and random.random() >= self.config.sample_rate):
            return None
        request = {key: value for key, value in body.items() if key.lower() not in CREDENTIAL_KEYS}
        return Pending(str(ULID()), time.time(), time.perf_counter(), str(workload), str(client), request, route,
                       dict(tags or {}))

    def finish(self, pending: Pending, status: int, payload: dict[str, Any] | None = None,
               error: str | None = None, first_token_at: float | None = None) -> None:
        """Never raises: a logging problem must not fail a request that was answered."""
        try:
            ok = status == 200 and payload is not None
            if not ok and error is None and payload is not None:
                error = str((payload.get("error") or {}).get("message", payload))
            record = LogRecord(
                id=pending.id,
                timestamp=pending.arrived,
                workload_id=pending.workload_id,
                client_id=pending.client_id,
                model=str(pending.request.get("model")),
                base_model=pending.route.base,
                adapter=pending.route.adapter,
                request=pending.request,
                response=payload if ok else None,
                usage=(payload or {}).get("usage") if ok else None,
                latency_ms=(time.perf_counter() - pending.started) * 1000,
                ttft_ms=(first_token_at - pending.started) * 1000 if first_token_at else None,
                status="ok" if ok else "error",
                error=None if ok else f"HTTP {status}: {error}",
                tags=pending.tags,
            )
            self.sink(record)
            telemetry.record_logged(record.workload_id, pending.tags.get("role"))
            if ok and pending.route.adapter and "shadow_of" not in pending.tags:
                self.on_student_tokens(record.workload_id, int((record.usage or {}).get("total_tokens", 0)))
        except Exception:
            logger.exception("could not log inference %s", pending.id)
