"""Curate one workload's logs into a versioned dataset, as a Ray job:

    ray job submit --working-dir . -- python jobs/curate.py --config configs/local.yaml --workload W

Prints the DatasetVersion as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.config import load_config
from flywheel.curation import curate_workload
from flywheel.ray_runtime import start_ray
from flywheel.store import open_store

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--config", default="configs/local.yaml")
parser.add_argument("--workload", required=True)
args = parser.parse_args()

config = load_config(args.config)
start_ray(config.ray)
store = open_store(config.store_url)
version = curate_workload(config, store, args.workload, progress=lambda text: print(text, file=sys.stderr))
store.close()
print(json.dumps(version.model_dump(mode="json")))
