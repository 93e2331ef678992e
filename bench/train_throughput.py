"""Training throughput: the plain SFT loop vs Ray Train (S4 target: Ray Train overhead <= 10%).

Same data (a curated support-tools dataset, prefix-pruned), same model (SmolLM2-135M),
same steps, one run: (a) `run_sft` in this process, (b) Ray Train with 1 worker, (c) Ray
Train with 2 workers (DDP over gloo); with `--compile`, also (a) with `train.compile: on`.
Tokens/s is measured inside the loop, from its first step (so compilation counts); wall
seconds include model loading and, for Ray Train, starting the workers. With `--repeats N`
each run is done N times and the table shows medians (and the range): on a shared 2-core
machine one run of each can differ by 10% from the next.

    python bench/train_throughput.py [--steps 8] [--batch 8] [--repeats 1] [--compile]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flywheel.chat_templates import chat_template_path
from flywheel.config import RayConfig, load_config
from flywheel.curation import curate_workload, prepare_in_process
from flywheel.models import pull_model
from flywheel.ray_runtime import start_ray
from flywheel.records import record_from_json
from flywheel.sft import LocalSession, run_sft
from flywheel.store import open_store
from flywheel.training import Candidate, train_candidates
from flywheel.workloads.support_tools import TEACHER, generate

CPUS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="examples per step, split across workers")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each; the table shows medians")
    parser.add_argument("--compile", action="store_true", help="also the plain loop with train.compile: on")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    home = Path(tempfile.mkdtemp(prefix="flywheel-train-bench-"))
    model = "smollm2-135m-instruct"
    config = load_config(REPO / "configs" / "local.yaml", {
        "home": str(home), "curate.teacher_models": [TEACHER], "curate.icl.semantic": False,
        "train.max_steps": args.steps, "train.checkpoint_every": 10_000, "train.early_stopping_patience": None})
    model_path = pull_model(model, config.models_dir)
    store = open_store(config.store_url)
    store.write_batch([record_from_json(item) for item in generate(2_000, seed=0)])
    dataset = curate_workload(config, store, "support-tools", prepare=prepare_in_process)
    store.close()

    results: dict[str, list[tuple[float, float]]] = {}  # run -> (tokens/s, wall s) per repeat
    loop = {**config.train.model_dump(), "batch_size": args.batch, "cpus_per_worker": CPUS,
            "model_path": str(model_path), "dataset_path": str(dataset.path), "output_dir": str(home / "plain"),
            "progress_file": None, "chat_template": Path(chat_template_path("chatml_tools")).read_text()}
    plain_runs = {"(a) plain loop, 1 process": "off"}
    if args.compile:
        plain_runs["(a) compiled (train.compile: on)"] = "on"
    for repeat, (name, compile_mode) in itertools.product(range(args.repeats), plain_runs.items()):
        started = time.perf_counter()
        metrics = run_sft({**loop, "compile": compile_mode},  # a fresh checkpoint folder: no resuming the last
                          LocalSession(home / f"plain-{compile_mode}-{repeat}-checkpoints"))
        results.setdefault(name, []).append((metrics["tokens_per_s"], time.perf_counter() - started))

    start_ray(RayConfig(num_cpus=CPUS))
    ray_runs = (("(b) Ray Train, 1 worker", 1), ("(c) Ray Train, 2 workers", 2))
    for _, (name, workers) in itertools.product(range(args.repeats), ray_runs):
        overrides = {"num_workers": workers, "cpus_per_worker": CPUS // workers, "batch_size": args.batch // workers}
        started = time.perf_counter()
        [adapter] = train_candidates(config, dataset, [Candidate(model, overrides)])
        results.setdefault(name, []).append((adapter.metrics["tokens_per_s"], time.perf_counter() - started))

    speeds = {name: [tokens_per_s for tokens_per_s, _ in runs] for name, runs in results.items()}
    walls = {name: statistics.median(wall for _, wall in runs) for name, runs in results.items()}
    median = {name: statistics.median(each) for name, each in speeds.items()}
    plain = median["(a) plain loop, 1 process"]
    table = Table("run", "tokens/s (in loop)", *(["range"] if args.repeats > 1 else []), "vs (a)",
                  "wall s (incl. start)")
    for name, each in speeds.items():
        spread = [f"{min(each):,.0f}-{max(each):,.0f}"] if args.repeats > 1 else []
        table.add_row(name, f"{median[name]:,.0f}", *spread, f"{median[name] / plain:.2f}x", f"{walls[name]:.0f}")
    Console().print(table)
    print(json.dumps({"benchmark": "train_throughput", "steps": args.steps, "batch": args.batch,
                      "repeats": args.repeats, "ray_train_overhead": 1 - median["(b) Ray Train, 1 worker"] / plain,
                      "results": {name: {"tokens_per_s": median[name], "wall_s": walls[name], "tokens_per_s_each": each}
                                  for name, each in speeds.items()}}))


if __name__ == "__main__":
    main()
