"""A private local Ray instance, as `flywheel train` / `turn` start one: it has no dashboard,
so no State API, and Ray Train's placement-group cleaner would warn once a second for as
long as a run trains. The instance's workers start with that logger at ERROR."""

from __future__ import annotations

import logging

import pytest

from flywheel.config import RayConfig
from flywheel.ray_runtime import _STATE_API_POLLER, start_ray

pytestmark = [pytest.mark.integration, pytest.mark.own_cluster]


def test_a_local_instance_without_a_dashboard_quiets_the_state_api_poller():
    import ray

    assert not ray.is_initialized()
    start_ray(RayConfig(num_cpus=1))
    try:
        @ray.remote(num_cpus=0)
        def poller_level() -> int:
            return logging.getLogger(_STATE_API_POLLER).getEffectiveLevel()

        assert ray.get(poller_level.remote(), timeout=120) == logging.ERROR
    finally:
        ray.shutdown()
