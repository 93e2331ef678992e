"""Log-store ingest and read-back speed (S2 target: >= 50,000 records/s into SQLite).

Writes N realistic tool-calling records (~1.6 KB JSON each) with `write_batch` in
batches into SQLite and into OpenSearch (osmem-server, in memory, on this machine), then
reads them back page by page (`query`), by partitions (`scan`), and through Ray Data
(`read_logs`, one read task per partition). Each write checks the store's erasure
tombstones: a second SQLite run writes the same records into a store that remembers
`--erasures` client erasures (and one workload erasure per 100), to show their cost, and
a third into one that remembers `--text-erasures` erasures by text (people's email
addresses, none of them in the records: every record is looked through in full).

    python bench/store_ingest.py [--records 50000] [--batch 1000] [--partitions 2] [--erasures 1000]
                                 [--text-erasures 1000]
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


def write_seconds(store, records: list[LogRecord], batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(records), batch):
        store.write_batch(records[start:start + batch])
    return time.perf_counter() - started


def measure(store, records: list[LogRecord], batch: int, partitions: int) -> dict[str, float]:
    """Seconds for: all records through `write_batch`; paged `query`; `partitions` + `scan`;
    and `read_logs` (Ray Data, `partitions` read tasks) to a materialized dataset."""
    from flywheel.log_dataset import read_logs

    seconds = {"write_batch": write_seconds(store, records, batch)}

    started, read, cursor = time.perf_counter(), 0, None
    while True:
        page = store.query(LogFilter(), limit=batch, cursor=cursor)
        read += len(page.records)
        if page.cursor is None:
            break
        cursor = page.cursor
    seconds["query (pages)"] = time.perf_counter() - started

    started = time.perf_counter()
    scanned = sum(1 for part in store.partitions(LogFilter(), partitions) for _ in store.scan(part))
    seconds["partitions + scan"] = time.perf_counter() - started

    started = time.perf_counter()
    dataset = read_logs(store, parallelism=partitions).materialize()
    seconds["read_logs (Ray Data)"] = time.perf_counter() - started
    assert read == scanned == dataset.count() == len(records), (read, scanned, dataset.count())
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--partitions", type=int, default=2, help="read tasks / scan slices (2 cores here)")
    parser.add_argument("--erasures", type=int, default=1_000, help="client erasures the second SQLite store remembers")
    parser.add_argument("--text-erasures", type=int, default=1_000,
                        help="erasures by text (email addresses) the third SQLite store remembers")
    args = parser.parse_args()

    import ray
    from osmem_server import OsmemServer
    from rich.console import Console
    from rich.table import Table

    from flywheel.config import RayConfig
    from flywheel.ray_runtime import start_ray

    start_ray(RayConfig(num_cpus=args.partitions))
    ray.data.range(args.partitions, override_num_blocks=args.partitions).materialize()  # start Ray Data's workers
    records = [record(i) for i in range(args.records)]
    size = sum(len(r.model_dump_json()) for r in records[:1000]) / 1000
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/logs.db")
        results["sqlite"] = measure(store, records, args.batch, args.partitions)
        store.close()
        store = open_store(f"sqlite:///{tmp}/remembering.db")
        for number in range(args.erasures):
            store.delete(LogFilter(client_id=f"erased-{number}"))
            if number % 100 == 0:
                store.delete(LogFilter(workload_id=f"retired-{number}"))
        results[f"sqlite, {len(store.tombstones()):,} erasures remembered"] = {
            "write_batch": write_seconds(store, records, args.batch)}
        assert store.count() == len(records)
        store.close()
        store = open_store(f"sqlite:///{tmp}/remembering-texts.db")
        for number in range(args.text_erasures):
            store.delete(LogFilter(contains=f"person.{number:05d}.{number * 7919 % 10007}@example.org"))
        results[f"sqlite, {len(store.tombstones()):,} text erasures remembered"] = {
            "write_batch": write_seconds(store, records, args.batch)}
        assert store.count() == len(records)
        store.close()
    server = OsmemServer.start()
    try:
        store = open_store(f"{server.url.replace('http://', 'opensearch+http://').rstrip('/')}/bench")
        results["opensearch (osmem)"] = measure(store, records, args.batch, args.partitions)
        store.close()
    finally:
        server.close()

    table = Table("backend", "operation", "records", "records/s", "MB/s")
    for backend, seconds in results.items():
        for operation, elapsed in seconds.items():
            table.add_row(backend, operation, str(args.records), f"{args.records / elapsed:,.0f}",
                          f"{args.records * size / elapsed / 1e6:.1f}")
    Console().print(table)
    print(json.dumps({"benchmark": "store_ingest", "records": args.records, "record_bytes": round(size),
                      "records_per_s": {backend: {op: round(args.records / elapsed) for op, elapsed in seconds.items()}
                                        for backend, seconds in results.items()}}))


if __name__ == "__main__":
    main()
