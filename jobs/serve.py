"""Deploy the service onto a running Ray cluster from `ray job submit`.

    ray job submit --working-dir . -- python jobs/serve.py --config configs/local.yaml

The Serve application outlives this driver; `serve shutdown` (or another deploy) ends it.
"""

import argparse
import json

from flywheel.config import load_config
from flywheel.service import deploy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--address", default="auto", help="Ray address (a job's driver joins its cluster).")
    args = parser.parse_args()

    config = load_config(args.config, {"ray.address": args.address})

    import ray

    ray.init(address=config.ray.address)
    url = deploy(config, timeout_s=600)
    print(json.dumps({"url": url, "openai_base_url": f"{url}/v1", "status": "deployed"}))


if __name__ == "__main__":
    main()
