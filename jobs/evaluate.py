"""Score candidates on a dataset's eval split through the running service, as a Ray job:

    ray job submit --working-dir . -- python jobs/evaluate.py --dataset ID --candidates base,icl,ADAPTER

Prints the report summary as one JSON line (the full report is under $FLYWHEEL_HOME/reports/).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.config import load_config
from flywheel.datasets import load_dataset
from flywheel.evaluation import evaluate
from flywheel.ray_runtime import start_ray

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--config", default="configs/local.yaml")
parser.add_argument("--dataset", required=True)
parser.add_argument("--candidates", default="base,icl")
parser.add_argument("--limit", type=int, default=None)
args = parser.parse_args()

config = load_config(args.config)
start_ray(config.ray)
report = evaluate(config, load_dataset(config.datasets_dir, args.dataset), args.candidates.split(","), args.limit,
                  progress=lambda text: print(text, file=sys.stderr))
print(json.dumps(report.summary()))
