"""What a watcher tick costs once a student serves the traffic and the teacher audits it.

Each tick (every `turn.poll_s`) the watcher counts a workload's answers to learn from
since its last turn (flywheel/watch.py: the teacher's, audits included, never the
student's own) and judges the serving student on its newest audits (flywheel/gate.py
`gate_audit`). This writes `--records` student answers of one alias into SQLite, an
hour old, with the teacher auditing `--audit-percent` of them, plus `--recent` answers of
the last minute, then times, side by side (best of `--repeat`):

- `store.count`, what the watcher counted before: every successful record, student ones too;
- the first tick's count of answers to learn from: one bulk scan of everything since the turn;
- a later tick's count: only the last minute's records (the rest is remembered);
- judging the student on its newest audits (`AUDIT_WINDOW` pairs).

    python bench/watch_scan.py [--records 200000] [--audit-percent 5] [--recent 500] [--repeat 3]
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

from flywheel.config import FlywheelConfig
from flywheel.gate import AUDIT_WINDOW
from flywheel.records import LogRecord
from flywheel.shadow import shadow_report
from flywheel.store import LogFilter, open_store
from flywheel.watch import Watcher

ALIAS, STUDENT = "support", "small:s1"


def answers(start: int, count: int, audit_every: int, at: float) -> list[LogRecord]:
    """Student answers to requests that named the alias; every `audit_every`-th one audited."""
    made = []
    for i in range(start, start + count):
        student = record(i).model_copy(update={"model": ALIAS, "workload_id": ALIAS, "timestamp": at,
                                               "base_model": "small", "adapter": "s1",
                                               "tags": {"mode": "student", "role": "student"}})
        made.append(student)
        if i % audit_every == 0:
            made.append(student.model_copy(update={"id": f"audit-{i}", "base_model": "teacher-70b", "adapter": None,
                                                   "tags": {"mode": "student", "role": "teacher",
                                                            "shadow_of": student.id}}))
    return made


def best(repeat: int, run) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--audit-percent", type=float, default=5.0)
    parser.add_argument("--recent", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    every = round(100 / args.audit_percent)

    with tempfile.TemporaryDirectory() as folder:
        config = FlywheelConfig.model_validate({"home": folder, "turn": {"workloads": [ALIAS]},
                                                "serve": {"models": [{"name": "small", "source": "x"}]}})
        store = open_store(config.store_url)
        began = time.time() - 3600
        old = answers(0, args.records, every, began + 1)
        for start in range(0, len(old), 5000):
            store.write_batch(old[start:start + 5000])
        store.write_batch(answers(args.records, args.recent, every, time.time() - 5))
        expected = sum(1 for i in range(args.records + args.recent) if i % every == 0)
        seconds = {}
        seconds["every successful record (store.count)"], counted = best(
            args.repeat, lambda: store.count(LogFilter(workload_id=ALIAS, status="ok")))
        assert counted == args.records + args.recent + expected
        seconds["answers to learn from, first tick"], views = best(
            args.repeat, lambda: Watcher(config, store, lambda *a: None).views())
        assert views[0].new_records == expected
        watcher = Watcher(config, store, lambda *a: None)
        watcher.views()
        seconds["answers to learn from, later ticks"], views = best(args.repeat, watcher.views)
        assert views[0].new_records == expected
        seconds[f"the student judged on {AUDIT_WINDOW} audits"], report = best(args.repeat, lambda: shadow_report(
            store, None, since=began, candidate=STUDENT, alias=ALIAS, limit=AUDIT_WINDOW))
        assert report["candidates"][STUDENT]["n"] == min(AUDIT_WINDOW, expected)
        store.close()

    print(f"{'a watcher tick reading':<46} {'seconds':>8}   ({args.records + args.recent:,} student answers, "
          f"{args.audit_percent:g}% audited)")
    for name, value in seconds.items():
        print(f"{name:<46} {value:>8.3f}")
    print(json.dumps({"benchmark": "watch_scan", "records": args.records + args.recent, "audits": expected,
                      "audit_percent": args.audit_percent, "seconds": seconds}))


if __name__ == "__main__":
    main()
