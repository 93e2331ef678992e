"""How fast `flywheel savings` prices a log store, beside `logs stats` on the same store.

The report reads every record in its window through the store's bulk scan and decodes
each one's usage (flywheel/savings.py); `stats` only counts indexed columns, so it is the
floor a store-side aggregation could reach. This writes `--records` records into SQLite
(a third answered by an adapter) and times both, best of `--repeat`.

    python bench/savings_scan.py [--records 200000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from store_ingest import record  # realistic tool-calling traffic

from flywheel.config import TurnConfig
from flywheel.savings import savings_report
from flywheel.store import open_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        store = open_store(f"sqlite:///{Path(folder) / 'logs.db'}")
        records = [record(i).model_copy(update={"adapter": "student"} if i % 3 == 0 else {})
                   for i in range(args.records)]
        for start in range(0, len(records), 5000):
            store.write_batch(records[start:start + 5000])
        seconds, results = {}, {}
        for name, run in (("flywheel savings", lambda: savings_report(store, TurnConfig())),
                          ("logs stats (counts only)", store.stats)):
            times = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                results[name] = run()
                times.append(time.perf_counter() - started)
            seconds[name] = min(times)
        assert results["logs stats (counts only)"]["total"] == args.records
        assert results["flywheel savings"]["total"]["student"]["requests"] == len(range(0, args.records, 3))
        store.close()

    print(f"{'reading':<28} {'seconds':>8} {'records/s':>10}   ({args.records:,} records, SQLite)")
    for name, value in seconds.items():
        print(f"{name:<28} {value:>8.3f} {args.records / value:>10,.0f}")
    print(json.dumps({"benchmark": "savings_scan", "records": args.records, "seconds": seconds,
                      "records_per_s": args.records / seconds["flywheel savings"]}))


if __name__ == "__main__":
    main()
