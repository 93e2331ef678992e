"""Starting or joining Ray the way this project's machines need it (see ENVIRONMENT.md)."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # workers import this module for `quiet_state_api_warnings`: keep it light
    from flywheel.config import RayConfig

# Ray Train's placement-group cleaner asks the State API, which the dashboard serves, once a
# second whether its controller still lives, and warns each time it gets no answer.
_STATE_API_POLLER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def start_ray(config: RayConfig) -> None:
    """`local`: a private instance with its own temp dir (never joins another on the
    machine, never touches `ray stop`); anything else: join that cluster."""
    import ray

    if ray.is_initialized():
        return
    if config.address == "local":
        # Ray 2.60 turns on token auth for new local clusters; a private one needs none.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            address="local",
            _temp_dir=tempfile.mkdtemp(prefix="flywheel-ray-", dir="/tmp"),
            include_dashboard=config.include_dashboard,
            num_cpus=config.num_cpus,
            log_to_driver=config.log_to_driver,
            runtime_env=None if config.include_dashboard else
            {"worker_process_setup_hook": f"{__name__}.{quiet_state_api_warnings.__name__}"},
        )
    else:
        ray.init(address=config.address, log_to_driver=config.log_to_driver)


def quiet_state_api_warnings() -> None:
    """Worker setup hook of a local instance without a dashboard: there the State API never
    answers, and Ray Train would print a warning a second for as long as a run trains."""
    logging.getLogger(_STATE_API_POLLER).setLevel(logging.ERROR)


def metrics_url() -> str | None:
    """The Prometheus endpoint of this node's Ray metrics agent (flywheel/telemetry.py)."""
    import ray

    node = next((n for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")), None)
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics" if node else None
