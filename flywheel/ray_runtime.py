"""Starting or joining Ray the way this project's machines need it (see ENVIRONMENT.md)."""

from __future__ import annotations

import os
import tempfile

from flywheel.config import RayConfig


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
        )
    else:
        ray.init(address=config.address, log_to_driver=config.log_to_driver)


def metrics_url() -> str | None:
    """The Prometheus endpoint of this node's Ray metrics agent (flywheel/telemetry.py)."""
    import ray

    node = next((n for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")), None)
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics" if node else None
