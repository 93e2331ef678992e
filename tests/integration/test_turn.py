"""Whole turns of the flywheel against the live service, on real data (the sample
workload imported as teacher history): a turn SIGKILLed during training resumes from its
Ray Train checkpoint and completes with a recorded gate decision; its metrics reach the
Ray metrics endpoint; the service's own watcher runs a turn queued over HTTP, and one
cancelled mid-training stops at its next step; and
`ray job submit` runs a turn on a Ray head this test starts and stops (its own processes
only — never `ray stop`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest
import yaml

from flywheel.config import load_config
from flywheel.service import free_port
from flywheel.turns import RunBook
from tests.integration.conftest import ADMIN_TOKEN, REPO, TURN_SETTINGS, TURN_WORKLOAD, run_cli

pytestmark = pytest.mark.integration
WORKLOAD = TURN_WORKLOAD


@pytest.fixture(scope="module")
def turn_config(service, ray_cluster) -> Path:
    """The service's home and store, this cluster, a small but real turn; 700 teacher records."""
    config = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    config.update(TURN_SETTINGS, home=str(service.home), models_dir=str(service.models_dir),
                  ray={"address": ray_cluster}, store={"url": service.store_url},
                  evaluate={**TURN_SETTINGS["evaluate"], "service_url": service.url, "concurrency": 8})
    path = service.home / "turn.yaml"
    path.write_text(yaml.safe_dump(config))
    logs = service.home / "turn-logs.jsonl"
    run_cli("workload", "generate", "support-tools", "--n", "700", "--seed", "5", "--out", str(logs))
    assert run_cli("logs", "import", str(logs), "--workload", WORKLOAD, config=path)["imported"] == 700
    return path


def _wait_for(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def test_a_turn_killed_in_training_resumes_and_completes_with_a_decision(service, turn_config):
    from flywheel.turn import run_turn

    book, run_id = RunBook(service.home / "turns"), f"{WORKLOAD}-killed"
    command = [sys.executable, "-m", "flywheel.cli", "turn", "--workload", WORKLOAD, "--run-id", run_id,
               "--max-steps", "8", "--config", str(turn_config), "--json"]
    turn = subprocess.Popen(command, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (record := book.get(run_id)) and "step 5/8" in record.stages["train"].progress, 600,
                  "training to pass its step-3 checkpoint")
    finally:
        turn.send_signal(signal.SIGKILL)
        turn.wait(30)
    killed = book.get(run_id)
    assert killed.status == "running" and not book.running(run_id)  # stale: its process is gone
    curated_at = killed.stages["curate"].finished_at

    record = run_turn(load_config(turn_config), run_id=run_id)
    assert record.status == "succeeded", record.error
    assert record.stages["curate"].finished_at == curated_at  # not curated again
    (adapter,) = record.stages["train"].artifacts["adapters"]
    metrics = record.stages["train"].artifacts["metrics"][adapter]
    assert metrics["step"] == 8 and metrics["resumed_from"] >= 3  # picked up its checkpoint
    assert record.report["candidates"][adapter]["function_name_and_args"]["n"] == 20
    decision = record.decision
    assert decision["alias"] == WORKLOAD and decision["reasons"] and Path(decision["path"]).is_file()
    shown = run_cli("runs", run_id, config=turn_config)
    assert shown["status"] == "succeeded" and shown["decision"]["promote"] == decision["promote"]
    status = run_cli("status", config=turn_config)
    assert status["latest_runs"][WORKLOAD]["run_id"] == run_id and status["records"][WORKLOAD] >= 700

    def exported() -> str | None:
        text = httpx.get(service.metrics_url, timeout=30).text
        wanted = ("ray_flywheel_turns_total", f'workload="{WORKLOAD}"', "ray_flywheel_stage_seconds",
                  "ray_flywheel_records_logged_total", "ray_flywheel_candidate_score",
                  "ray_flywheel_gate_decisions_total")
        return text if all(name in text for name in wanted) else None

    text = _wait_for(exported, 60, "the turn's metrics on the Ray metrics endpoint")
    assert any('status="succeeded"' in line and WORKLOAD in line for line in text.splitlines()
               if line.startswith("ray_flywheel_turns_total"))


ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _queue(service, **options) -> str:
    """POST /v1/flywheel/runs: a pending run for the service's watcher; its id."""
    queued = httpx.post(f"{service.url}/v1/flywheel/runs", headers=ADMIN, timeout=30,
                        json={"workload": WORKLOAD, **options})
    assert queued.status_code == 202 and queued.json()["status"] == "pending", queued.text
    return queued.json()["run_id"]


def _run(service, run_id: str) -> dict:
    return httpx.get(f"{service.url}/v1/flywheel/runs/{run_id}", headers=ADMIN, timeout=30).json()


def _finished(service, run_id: str) -> dict:
    return _wait_for(lambda: (run := _run(service, run_id))["status"] not in ("pending", "running") and run, 600,
                     f"run {run_id} to finish")


def test_the_services_own_watcher_turns_a_run_queued_over_http(service, turn_config):
    """`turn.watch_in_service` (conftest's service): the `watcher` Serve deployment starts a
    run queued with POST /v1/flywheel/runs and takes it to a gate decision, using the
    cluster from inside the app; nothing in this test runs the turn."""
    run = _finished(service, _queue(service, max_steps=2, eval_limit=10))
    assert run["status"] == "succeeded", run["error"]
    (adapter,) = run["stages"]["train"]["artifacts"]["adapters"]
    assert run["stages"]["train"]["artifacts"]["metrics"][adapter]["step"] == 2
    assert run["report"]["candidates"][adapter]["function_name_and_args"]["n"] == 10
    assert not run["decision"]["promote"]  # 10 scored items are too few for this gate
    assert "fail: 10 items scored (the gate needs >= 20)" in run["decision"]["reasons"]


def test_a_turn_cancelled_mid_training_stops_at_its_next_step(service, turn_config):
    """Cancel over HTTP while the service's watcher is training: the loop ends after its
    current step (not after 200), keeps what it learned, and the turn ends cancelled."""
    run_id = _queue(service, max_steps=200)
    _wait_for(lambda: "step" in _run(service, run_id)["stages"]["train"]["progress"], 300,
              "the queued turn to start training")
    cancel = httpx.post(f"{service.url}/v1/flywheel/runs/{run_id}/cancel", headers=ADMIN, timeout=30)
    assert cancel.json()["cancel_requested"]
    run = _finished(service, run_id)
    assert run["status"] == "cancelled" and run["stages"]["evaluate"]["status"] == "pending"
    (metrics,) = run["stages"]["train"]["artifacts"]["metrics"].values()
    assert metrics["stopped"] == "requested" and metrics["step"] < 100


@contextmanager
def private_head(env: dict) -> Iterator[str]:
    """`ray start --head --block` on free ports and its own temp dir; the dashboard URL. Stopped
    by ending that process and its descendants (its own cluster only: never `ray stop`).
    The ports are explicit because the service's cluster already holds Ray's defaults."""
    import psutil

    ports = [free_port() for _ in range(4)]
    temp = tempfile.mkdtemp(prefix="fw-head-", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen([ray, "start", "--head", "--block", f"--port={ports[0]}", "--num-cpus=4",
                             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={ports[1]}",
                             f"--dashboard-agent-listen-port={ports[2]}", f"--ray-client-server-port={ports[3]}",
                             f"--temp-dir={temp}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{ports[1]}"
        _wait_for(lambda: _answers(f"{url}/api/version"), 120, "the private head's dashboard")
        yield url
    finally:
        family = [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)]
        for process in family:
            with suppress(psutil.NoSuchProcess):
                process.terminate()
        _, alive = psutil.wait_procs(family, timeout=15)
        for process in alive:
            with suppress(psutil.NoSuchProcess):
                process.kill()
        head.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_ray_job_submit_runs_a_turn_on_a_fresh_head(service, turn_config, tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    with private_head(env) as dashboard:
        config = yaml.safe_load(turn_config.read_text())
        config["ray"] = {"address": "auto"}  # the job's driver joins the head it was submitted to
        job_config = tmp_path / "job.yaml"
        job_config.write_text(yaml.safe_dump(config))
        submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", dashboard,
                  "--working-dir", str(REPO), "--", "python", "jobs/flywheel_turn.py", "--config", str(job_config),
                  "--workload", WORKLOAD, "--max-steps", "2", "--eval-limit", "10"]
        for _ in range(30):  # the head's job agent registers a few seconds after the dashboard answers
            job = subprocess.run(submit, check=False, capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
            if "No available agent" not in job.stderr:
                break
            time.sleep(2)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-2000:]
        record = json.loads(next(line for line in reversed(job.stdout.splitlines()) if line.startswith("{")))
        assert record["status"] == "succeeded" and record["decision"]["reasons"]
        assert RunBook(service.home / "turns").get(record["run_id"]).status == "succeeded"
