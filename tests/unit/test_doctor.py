"""`flywheel doctor` on a home with something wrong in each place it looks. The HTTP probe
is injected (no service or hosted API runs here); the CLI runs as a user runs it."""

import json
import subprocess
import sys

import httpx
import pytest
import yaml

from flywheel.config import FlywheelConfig
from flywheel.doctor import run_checks
from flywheel.routes import open_route_book
from flywheel.service import free_port


@pytest.fixture
def config(tmp_path, monkeypatch):
    model = tmp_path / "local-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "adapters" / "small" / "tuned").mkdir(parents=True)
    (tmp_path / "adapters" / "small" / "tuned" / "adapter_config.json").write_text("{}")
    monkeypatch.setenv("GOOD_KEY", "sk-1")
    monkeypatch.delenv("MISSING_KEY", raising=False)
    return FlywheelConfig.model_validate({
        "home": str(tmp_path), "models_dir": str(tmp_path / "models"), "serve": {"port": free_port(),
            "models": [{"name": "small", "source": str(model)}, {"name": "absent", "source": "smollm2-135m-instruct"}],
            "upstreams": [{"name": "keyed", "base_url": "http://api.test/v1", "api_key_env": "GOOD_KEY"},
                          {"name": "keyless", "base_url": "http://other.test/v1", "api_key_env": "MISSING_KEY"},
                          {"name": "refusing", "base_url": "http://refusing.test/v1"}],
            "aliases": {"support": {"base": "small", "teacher": "keyed"}, "billing": {"base": "small"}}},
        "curate": {"teacher_models": ["keyed"]}})


def probe(asked: list):
    def get(url, **kwargs):
        asked.append((url, kwargs.get("headers")))
        if url.endswith("/health"):
            return httpx.Response(503, json={"status": "unavailable", "models": {"small": "ok", "absent": "down"}})
        return httpx.Response(401 if "refusing" in url else 200, json={"data": []})
    return get


def test_each_problem_is_named_with_its_fix(config):
    book = open_route_book(config)
    book.promote("support", "tuned")
    book.promote("billing", "tuned")
    (config.adapters_dir / "small" / "tuned" / "adapter_config.json").unlink()  # deleted under a serving alias
    (config.home / "spool").mkdir()
    (config.home / "spool" / "0001.jsonl").write_text("{}\n")
    asked: list = []
    checks = {check.name: check for check in run_checks(config, probe(asked))}
    assert checks["model small"].status == "ok" and checks["model absent"].status == "fail"
    assert "flywheel models pull smollm2-135m-instruct" in checks["model absent"].detail
    assert checks["log store"].status == "ok" and "0 records" in checks["log store"].detail
    assert checks["spool"].status == "warn" and checks["spool"].detail.startswith("1 batches")
    assert checks["service"].status == "fail" and "absent down" in checks["service"].detail
    assert checks["upstream keyed"].status == "ok"
    assert ("http://api.test/v1/models", {"Authorization": "Bearer sk-1"}) in asked
    assert checks["upstream keyless"].status == "fail" and "$MISSING_KEY is not set" in checks["upstream keyless"].detail
    assert checks["upstream refusing"].status == "fail" and "HTTP 401" in checks["upstream refusing"].detail
    assert checks["alias support"].status == "fail" and "student small:tuned is gone" in checks["alias support"].detail
    billing = checks["alias billing"]  # also its teacher's answers are not training data
    assert billing.status == "fail" and "small is not in curate.teacher_models" in billing.detail
    assert checks["disk"].status in ("ok", "warn")


def test_the_cli_prints_json_and_exits_1_when_a_check_fails(config, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    result = subprocess.run([sys.executable, "-m", "flywheel.cli", "doctor", "--config", str(path), "--json"],
                            check=False, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "GOOD_KEY": "sk-1"})
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 1 and report["ok"] is False
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    assert statuses["model absent"] == "fail" and statuses["service"] == "warn"  # nothing listens on its port
