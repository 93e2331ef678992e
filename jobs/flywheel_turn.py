"""One turn of the flywheel as a Ray job: curate -> train -> evaluate -> gate -> promote.

    ray job submit --working-dir . -- python jobs/flywheel_turn.py --config configs/local.yaml --workload W

The Serve app must be running on the cluster (evaluation asks it) and share
`$FLYWHEEL_HOME` with this job. `--run-id ID` resumes a failed run from its first
unfinished stage (or names a new one); a run that succeeded is not run again. Progress
goes to stderr; the run record is the last line of stdout (JSON). Exit 1 when it failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.config import load_config
from flywheel.ray_runtime import start_ray
from flywheel.turn import run_turn

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--config", default="configs/local.yaml")
parser.add_argument("--workload", default=None)
parser.add_argument("--run-id", default=None)
parser.add_argument("--max-steps", type=int, default=None)
parser.add_argument("--eval-limit", type=int, default=None)
args = parser.parse_args()
if args.workload is None and args.run_id is None:
    parser.error("give --workload (a new turn) or --run-id (resume one)")

config = load_config(args.config)
start_ray(config.ray)
options = {key: value for key, value in {"max_steps": args.max_steps, "eval_limit": args.eval_limit}.items() if value}
record = run_turn(config, args.workload, args.run_id, options,
                  progress=lambda stage, text: print(f"[{stage}] {text}", file=sys.stderr, flush=True))
print(json.dumps(record.summary()))
sys.exit(0 if record.status in ("succeeded", "cancelled") else 1)
