"""Log-store ingest and read-back speed (S2 target: >= 50,000 records/s into SQLite).

Writes N realistic tool-calling records (~1.6 KB JSON each) with `write_batch` in
batches, then reads them back page by page (`query`) and by partitions (`scan`).
OpenSearch and Ray Data `read_logs` columns join when those land.

    python bench/store_ingest.py [--records 50000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.records import LogRecord
from flywheel.store import LogFilter, open_store

TOOLS = [{"type": "function", "function": {"name": name, "description": f"{name} for a customer order",
                                           "parameters": {"type": "object", "properties": {
                                               "order_id": {"type": "string"}, "reason": {"type": "string"}},
                                               "required": ["order_id"]}}}
         for name in ("get_order_status", "issue_refund", "start_return", "change_address")]


def record(i: int) -> LogRecord:
    tool = TOOLS[i % len(TOOLS)]["function"]["name"]
    return LogRecord(
        timestamp=1_760_000_000 + i * 0.01, workload_id=f"support-{i % 3}", client_id=f"web-{i % 7}",
        model="teacher-70b",
        request={"model": "teacher-70b", "tools": TOOLS, "messages": [
            {"role": "system", "content": "You are a support agent for an online shop. Use the tools."},
            {"role": "user", "content": f"Hi, about order {100000 + i}: where is it? I ordered it last week."}]},
        response={"id": f"chatcmpl-{i}", "object": "chat.completion", "model": "teacher-70b", "choices": [
            {"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None,
             "tool_calls": [{"id": f"call_{i}", "type": "function", "function": {
                 "name": tool, "arguments": json.dumps({"order_id": str(100000 + i)})}}]}}],
            "usage": {"prompt_tokens": 310, "completion_tokens": 24, "total_tokens": 334}},
        usage={"prompt_tokens": 310, "completion_tokens": 24, "total_tokens": 334}, latency_ms=812.5,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()

    records = [record(i) for i in range(args.records)]
    size = sum(len(r.model_dump_json()) for r in records[:1000]) / 1000
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/logs.db")
        started = time.perf_counter()
        for start in range(0, len(records), args.batch):
            store.write_batch(records[start:start + args.batch])
        write_s = time.perf_counter() - started

        started, read, cursor = time.perf_counter(), 0, None
        while True:
            page = store.query(LogFilter(), limit=args.batch, cursor=cursor)
            read += len(page.records)
            if page.cursor is None:
                break
            cursor = page.cursor
        query_s = time.perf_counter() - started

        started = time.perf_counter()
        scanned = sum(1 for part in store.partitions(LogFilter(), args.partitions) for _ in store.scan(part))
        scan_s = time.perf_counter() - started
        store.close()
    assert read == scanned == args.records, (read, scanned)

    from rich.console import Console
    from rich.table import Table

    table = Table("backend", "operation", "records", "records/s", "MB/s")
    for name, seconds in (("write_batch", write_s), ("query (pages)", query_s), ("partitions + scan", scan_s)):
        table.add_row("sqlite", name, str(args.records), f"{args.records / seconds:,.0f}",
                      f"{args.records * size / seconds / 1e6:.1f}")
    Console().print(table)
    print(json.dumps({"benchmark": "store_ingest", "records": args.records, "record_bytes": round(size),
                      "sqlite_write_rps": args.records / write_s, "sqlite_query_rps": args.records / query_s,
                      "sqlite_scan_rps": args.records / scan_s}))


if __name__ == "__main__":
    main()
