"""What an erasure request costs: one client's records deleted with their rows in every
curated dataset version (flywheel/erasure.py), beside deleting the records alone.

This writes `--records` realistic tool-calling records from `--clients` clients into
SQLite and `--versions` dataset versions of `--rows` rows each (rows made from a seeded
sample of the records, as curation makes them), then times, each on a different client
(best of `--repeat`):

- `store.delete` alone: the records only (what `flywheel logs delete` did before);
- `erase` as a dry run: the count, the ids, and every version's id columns read;
- `erase`: the records deleted, and each version holding one of their rows rewritten
  (JSONL, Parquet, manifest);
- the same two by text: each client's requests mention its user's email address, and the
  erasure names that (`--contains`), so every record is read to find them.

    python bench/erasure.py [--records 200000] [--clients 2000] [--versions 5] [--rows 50000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from store_ingest import record  # realistic tool-calling traffic

from flywheel.config import FlywheelConfig
from flywheel.datasets import write_dataset
from flywheel.erasure import erase
from flywheel.records import LogRecord
from flywheel.store import LogFilter, open_store

WORKLOAD = "support"


def rows(ids: list[str]) -> list[dict]:
    """Dataset rows for these record ids, shaped as curation writes them."""
    made = []
    for i, row_id in enumerate(ids):
        messages = [{"role": "user", "content": f"Hi, about order {100000 + i}: where is it? I ordered it last week."},
                    {"role": "assistant", "content": None, "tool_calls": [{"id": f"call_{i}", "type": "function",
                     "function": {"name": "get_order_status", "arguments": json.dumps({"order_id": str(i)})}}]}]
        made.append({"id": row_id, "label": "get_order_status", "source": "teacher", "tools": "[]",
                     "messages": json.dumps(messages)})
    return made


def email(client: str) -> str:
    return f"{client}@example.org"


def mentioning(made: LogRecord, client: str) -> LogRecord:
    """The record as `client` sent it, its user's email address in the request."""
    system, user = made.request["messages"]
    asked = {**user, "content": f"{user['content']} Reply to {email(client)}."}
    return made.model_copy(update={"workload_id": WORKLOAD, "client_id": client,
                                   "request": {**made.request, "messages": [system, asked]}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=2_000)
    parser.add_argument("--versions", type=int, default=5)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        config = FlywheelConfig.model_validate({"home": folder, "serve": {"models": [{"name": "m", "source": "x"}]}})
        store = open_store(config.store_url)
        ids = []
        for start in range(0, args.records, 5000):
            batch = [mentioning(record(i), f"client-{i % args.clients}")
                     for i in range(start, min(start + 5000, args.records))]
            store.write_batch(batch)
            ids += [made.id for made in batch]
        for version in range(args.versions):
            chosen = random.Random(version).sample(ids, min(args.rows, len(ids)))
            cut = len(chosen) // 10
            write_dataset(config.datasets_dir, WORKLOAD, {"train": rows(chosen[2 * cut:]), "val": rows(chosen[cut:2 * cut]),
                                                        "eval": rows(chosen[:cut]), "icl": []},
                          {"prefix": None, "created_at": time.time()}, {}, [])
        per_client = args.records // args.clients
        clients = iter(f"client-{i}" for i in range(args.clients))
        seconds: dict[str, float] = {}
        removed: dict[str, int] = {}

        def timed(name, run, by_text: bool = False) -> None:
            best = float("inf")
            for _ in range(args.repeat):
                client = next(clients)
                chosen = LogFilter(contains=email(client)) if by_text else LogFilter(client_id=client)
                started = time.perf_counter()
                result = run(chosen)
                best = min(best, time.perf_counter() - started)
                assert (result if isinstance(result, int) else result.matched) == per_client
                if not isinstance(result, int):
                    removed[name] = sum(sum(hits.values()) for hits in result.datasets.values())
            seconds[name] = best

        timed("records only (store.delete)", store.delete)
        timed("erase, dry run", lambda chosen: erase(config, store, chosen, dry_run=True))
        timed("erase: records and dataset rows", lambda chosen: erase(config, store, chosen))
        timed("by text: records only", store.delete, by_text=True)
        timed("by text: erase", lambda chosen: erase(config, store, chosen), by_text=True)
        store.close()

    print(f"{'one client (or email) erased':<34} {'seconds':>8} {'dataset rows':>13}   ({args.records:,} records, "
          f"{per_client} per client; {args.versions} versions x {args.rows:,} rows)")
    for name, value in seconds.items():
        print(f"{name:<34} {value:>8.3f} {removed.get(name, 0):>13}")
    print(json.dumps({"benchmark": "erasure", "records": args.records, "per_client": per_client,
                      "versions": args.versions, "rows": args.rows, "seconds": seconds, "dataset_rows": removed}))


if __name__ == "__main__":
    main()
