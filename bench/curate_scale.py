"""Curation at scale (S3 target on this 2-core machine: 1M records in <= 120 s, and >= 1.0x
the single-process throughput).

Generates N support-tools records into a fresh SQLite store (not timed), then runs the
whole `curate_workload` twice in one run: per-record work on Ray Data (`prepare_on_ray`,
2 read tasks) and the same code in this one process (`prepare_in_process`). The driver
steps (dedup, split, ICL, writing) are the same in both. Peak memory is the machine's
used memory above the idle baseline, sampled every 0.2 s (Ray workers included).

    python bench/curate_scale.py [--records 1000000] [--no-semantic]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from flywheel.config import load_config
from flywheel.curation import curate_workload, prepare_in_process, prepare_on_ray
from flywheel.records import record_from_json
from flywheel.store import open_store
from flywheel.workloads.support_tools import TEACHER, generate


class PeakMemory:
    def __enter__(self):
        self.baseline = self.peak = psutil.virtual_memory().used
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, psutil.virtual_memory().used)

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()

    @property
    def gib(self) -> float:
        return (self.peak - self.baseline) / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--no-semantic", action="store_true", help="skip MiniLM ICL picks")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from flywheel.config import RayConfig
    from flywheel.ray_runtime import start_ray

    home = Path(tempfile.mkdtemp(prefix="flywheel-curate-bench-"))
    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "local.yaml",
                         {"home": str(home), "curate.teacher_models": [TEACHER],
                          "curate.icl.semantic": not args.no_semantic})
    store = open_store(config.store_url)
    started = time.perf_counter()
    batch = []
    for item in generate(args.records, seed=0):
        batch.append(record_from_json(item))
        if len(batch) == 10_000:
            store.write_batch(batch)
            batch = []
    store.write_batch(batch)
    print(f"set-up: {args.records:,} records generated and stored in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    start_ray(RayConfig(num_cpus=2))
    import ray

    ray.data.range(2, override_num_blocks=2).materialize()  # Ray Data's workers up before timing
    if not args.no_semantic:
        from flywheel.icl import embedding_model

        embedding_model()  # loaded once per process: neither run pays for it

    results = {}
    for name, prepare in (("Ray Data", prepare_on_ray), ("single process", prepare_in_process)):
        run_config = config.model_copy(update={"home": home / name.replace(" ", "-")})
        with PeakMemory() as memory:
            started = time.perf_counter()
            version = curate_workload(run_config, store, "support-tools", prepare=prepare)
            seconds = time.perf_counter() - started
        results[name] = {"seconds": seconds, "records_per_s": args.records / seconds, "peak_gib": memory.gib,
                         "content_hash": version.content_hash, "train": version.counts["train"]}
    store.close()
    assert len({r["content_hash"] for r in results.values()}) == 1, "the two paths curated differently"

    table = Table("pipeline", "records", "seconds", "records/s", "peak memory GiB", "train rows")
    for name, result in results.items():
        table.add_row(name, f"{args.records:,}", f"{result['seconds']:.1f}", f"{result['records_per_s']:,.0f}",
                      f"{result['peak_gib']:.1f}", f"{result['train']:,}")
    Console().print(table)
    ratio = results["Ray Data"]["records_per_s"] / results["single process"]["records_per_s"]
    print(json.dumps({"benchmark": "curate_scale", "records": args.records, "ray_vs_single_process": ratio,
                      **{name.replace(" ", "_"): result for name, result in results.items()}}))


if __name__ == "__main__":
    main()
