"""How long judging a shadow trial takes when its alias is a small part of the traffic.

The watcher judges every open trial at every tick (flywheel/gate.py `gate_shadow`), on
the pairs logged since the trial began. It reads them with the store filtering on the
alias the requests named; without that filter it reads every record since the trial
began and keeps the few that are shadow answers. This writes `--other` records of other
traffic and `--pairs` teacher/candidate pairs of one alias into SQLite, then times the
trial's report both ways, side by side (best of `--repeat`).

    python bench/shadow_scan.py [--other 200000] [--pairs 60] [--repeat 3]
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

from store_ingest import record  # realistic tool-calling traffic of another model

from flywheel.records import LogRecord
from flywheel.shadow import shadow_report
from flywheel.store import open_store

ALIAS, CANDIDATE = "support", "small:trial"


def pair(i: int) -> list[LogRecord]:
    """A teacher answer to a request that named the alias, and the candidate's shadow of it."""
    teacher = record(i).model_copy(update={"model": ALIAS, "workload_id": ALIAS, "timestamp": time.time(),
                                           "tags": {"mode": "shadow", "role": "teacher"}})
    shadow = teacher.model_copy(update={"id": f"shadow-{i}", "base_model": "small", "adapter": "trial",
                                        "tags": {"mode": "shadow", "role": "candidate", "shadow_of": teacher.id}})
    return [teacher, shadow]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=int, default=200_000)
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        store = open_store(f"sqlite:///{Path(folder) / 'logs.db'}")
        began = time.time() - 1
        other = [record(i).model_copy(update={"timestamp": began + 0.5}) for i in range(args.other)]
        for start in range(0, len(other), 5000):
            store.write_batch(other[start:start + 5000])
        store.write_batch([item for i in range(args.pairs) for item in pair(i)])
        seconds = {}
        for name, alias in (("every record since the trial began", None), ("the alias's records only", ALIAS)):
            times = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                report = shadow_report(store, None, since=began, candidate=CANDIDATE, alias=alias)
                times.append(time.perf_counter() - started)
                assert report["candidates"][CANDIDATE]["n"] == args.pairs
            seconds[name] = min(times)
        store.close()

    print(f"{'a trial judged reading':<40} {'seconds':>8}   ({args.pairs} pairs among {args.other:,} other records)")
    for name, value in seconds.items():
        print(f"{name:<40} {value:>8.3f}")
    unfiltered, filtered = seconds.values()
    print(json.dumps({"benchmark": "shadow_scan", "other_records": args.other, "pairs": args.pairs,
                      "seconds": seconds, "speedup": unfiltered / filtered}))


if __name__ == "__main__":
    main()
