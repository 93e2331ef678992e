"""Fine-tune LoRA candidates on a curated dataset, as a Ray job:

    ray job submit --working-dir . -- python jobs/train.py --config configs/local.yaml --dataset ID

`--candidate '{"lora_r": 8}'` (repeatable) trains several hyperparameter sets concurrently.
Prints one JSON line: the AdapterVersions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.config import load_config
from flywheel.datasets import load_dataset
from flywheel.ray_runtime import start_ray
from flywheel.training import Candidate, train_candidates

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--config", default="configs/local.yaml")
parser.add_argument("--dataset", required=True)
parser.add_argument("--base", default=None)
parser.add_argument("--candidate", action="append", type=json.loads, default=None,
                    help="JSON object of train.* overrides; one candidate each")
args = parser.parse_args()

config = load_config(args.config)
start_ray(config.ray)
dataset = load_dataset(config.datasets_dir, args.dataset)
candidates = [Candidate(args.base, overrides) for overrides in (args.candidate or [{}])]
adapters = train_candidates(config, dataset, candidates,
                            progress=lambda adapter, step: print(f"{adapter} step {step['step']}/{step['total_steps']} "
                                                                 f"loss {step['loss']:.3f}", file=sys.stderr))
print(json.dumps({"adapters": [adapter.model_dump(mode="json") for adapter in adapters]}))
