"""What inference logging costs the serving path (S2 target: <= 1 ms added p99, >= 98%
throughput).

One Serve app, one vLLM engine: requests tagged with a workload that the config opts out
of logging (`serve.logging.exclude_workloads`) skip all logging work, the others are
logged to SQLite. Logged and unlogged rounds alternate (3 each per level, 8 and 32
clients, streaming and not) so the machine's noise hits both alike. End-to-end requests
take seconds here, so the in-process hot-path cost (microseconds per request) is printed
first: it is what the 1 ms target is about.

    python bench/logging_overhead.py [--rounds 3] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.serve_throughput import load_level
from flywheel.config import load_config
from flywheel.service import free_port

UNLOGGED = "bench-unlogged"


def hot_path_cost(samples: int = 5_000) -> dict:
    """Microseconds the ingress spends per request on logging (begin + finish + submit to
    the writer's queue), measured in-process; the write itself happens on another thread."""
    import time

    from flywheel.config import LoggingConfig
    from flywheel.log_writer import LogWriter
    from flywheel.store import open_store
    from serve.inference_log import InferenceLog
    from serve.routing import Route

    body = {"model": "m", "messages": [{"role": "system", "content": "You are a support agent. " * 10},
                                       {"role": "user", "content": "Where is my order 4521? " * 4}],
            "max_tokens": 64, "temperature": 0}
    payload = {"id": "x", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "It shipped yesterday. " * 8},
         "finish_reason": "stop"}], "usage": {"prompt_tokens": 120, "completion_tokens": 64, "total_tokens": 184}}
    with tempfile.TemporaryDirectory() as tmp:
        writer = LogWriter(lambda: open_store(f"sqlite:///{tmp}/logs.db"), Path(tmp) / "spool")
        log = InferenceLog(LoggingConfig(), writer.submit)
        costs = []
        for _ in range(samples):
            started = time.perf_counter()
            pending = log.begin({"x-workload-id": "w"}, body, Route("m"))
            log.finish(pending, 200, {**payload, "id": pending.id})
            costs.append((time.perf_counter() - started) * 1e6)
        writer.close()
        stored = open_store(f"sqlite:///{tmp}/logs.db").count()
    costs.sort()
    return {"p50_us": costs[len(costs) // 2], "p99_us": costs[int(len(costs) * 0.99)], "stored": stored}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "local.yaml"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    cost = hot_path_cost()
    print(f"hot-path logging cost per request: p50 {cost['p50_us']:.0f} us, p99 {cost['p99_us']:.0f} us", flush=True)
    os.environ.setdefault("FLYWHEEL_HOME", tempfile.mkdtemp(prefix="flywheel-bench-"))
    cfg = load_config(args.config, {"serve.port": free_port(), "serve.access_log": False,
                                    "serve.logging.exclude_workloads": [UNLOGGED]})
    from flywheel.service import running_service
    from flywheel.store import open_store

    model = cfg.serve.models[0].name
    rows = []
    with running_service(cfg) as url:
        load_level(url, model, 4, 8, 8, stream=False)  # warm-up
        for level in (8, 32):
            for stream in (False, True):
                runs = {"logged": [], "unlogged": []}
                for _ in range(args.rounds):
                    for mode, workload in (("logged", "bench-logged"), ("unlogged", UNLOGGED)):
                        runs[mode].append(load_level(url, model, level, 2 * level, args.max_tokens, stream,
                                                     headers={"X-Workload-Id": workload}))
                med = {mode: {key: statistics.median(run[key] for run in result) for key in ("tok_s", "p50_s", "p99_s")}
                       for mode, result in runs.items()}
                rows.append({"clients": level, "stream": stream,
                             "added_p50_ms": (med["logged"]["p50_s"] - med["unlogged"]["p50_s"]) * 1000,
                             "added_p99_ms": (med["logged"]["p99_s"] - med["unlogged"]["p99_s"]) * 1000,
                             "throughput_ratio": med["logged"]["tok_s"] / med["unlogged"]["tok_s"],
                             "logged_tok_s": med["logged"]["tok_s"], "unlogged_tok_s": med["unlogged"]["tok_s"]})
                print(f"  c={level} stream={stream}: ratio {rows[-1]['throughput_ratio']:.3f}", flush=True)
    store = open_store(cfg.store_url)
    logged = store.count()
    store.close()

    from rich.console import Console
    from rich.table import Table

    table = Table("clients", "stream", "unlogged tok/s", "logged tok/s", "ratio", "added p50 ms", "added p99 ms")
    for row in rows:
        table.add_row(str(row["clients"]), str(row["stream"]), f"{row['unlogged_tok_s']:.1f}",
                      f"{row['logged_tok_s']:.1f}", f"{row['throughput_ratio']:.3f}", f"{row['added_p50_ms']:+.1f}",
                      f"{row['added_p99_ms']:+.1f}")
    Console().print(table)
    print(json.dumps({"benchmark": "logging_overhead", "hot_path": cost, "records_logged": logged, "rows": rows}))


if __name__ == "__main__":
    main()
