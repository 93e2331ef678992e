"""The loop closed on a hosted teacher: live requests answered by `relay` (a
`serve.upstreams` entry: this service's own /v1 over real HTTP, as a hosted API would be)
are logged, curated as teacher data (`curate.teacher_models: [relay]`), trained on,
evaluated and gated, with nothing imported. No hosted API can be reached from here."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from flywheel.config import load_config
from flywheel.datasets import load_dataset
from flywheel.turn import run_turn
from tests.integration.conftest import RELAY, REPO, TURN_SETTINGS, run_cli

pytestmark = pytest.mark.integration
WORKLOAD = "hosted-teacher"
REQUESTS = 48


def test_a_turn_learns_from_a_hosted_teachers_live_answers(service, ray_cluster, tmp_path):
    generated = tmp_path / "requests.jsonl"
    run_cli("workload", "generate", "support-tools", "--n", str(REQUESTS), "--seed", "11", "--out", str(generated))

    def ask(line: str) -> str:
        request = json.loads(line)["request"]
        body = {"model": RELAY, "messages": request["messages"], "max_tokens": 48, "temperature": 0,
                **({"tools": request["tools"]} if request.get("tools") else {})}
        answer = httpx.post(f"{service.base_url}/chat/completions", json=body, timeout=300,
                            headers={"X-Workload-Id": WORKLOAD})
        assert answer.status_code == 200, answer.text
        return answer.headers["X-Flywheel-Log-Id"]

    with ThreadPoolExecutor(8) as pool:
        log_ids = set(pool.map(ask, generated.read_text().splitlines()))
    assert len(log_ids) == REQUESTS

    config = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    config.update(TURN_SETTINGS, home=str(service.home), models_dir=str(service.models_dir),
                  ray={"address": ray_cluster}, store={"url": service.store_url},
                  evaluate={**TURN_SETTINGS["evaluate"], "service_url": service.url, "concurrency": 8})
    config["curate"] = {**TURN_SETTINGS["curate"], "teacher_models": [RELAY], "eval_size": 12}
    config["gate"] = {**TURN_SETTINGS["gate"], "min_eval_size": 10}
    path = tmp_path / "hosted.yaml"
    path.write_text(yaml.safe_dump(config))
    settled = run_cli("logs", "stats", "--workload", WORKLOAD, config=path)
    assert settled["total"] >= REQUESTS and settled["by_model"].get(RELAY, 0) >= REQUESTS

    hosted = load_config(path)
    record = run_turn(hosted, WORKLOAD, options={"max_steps": 2, "eval_limit": 10})
    assert record.status == "succeeded", record.error
    dataset = load_dataset(hosted.datasets_dir, record.stages["curate"].artifacts["dataset_id"])
    rows = [json.loads(line) for split in ("train", "eval") for line in
            (dataset.path / f"{split}.jsonl").read_text().splitlines()]
    assert rows and {row["id"] for row in rows} <= log_ids  # every example is one of relay's live answers
    (adapter,) = record.stages["train"].artifacts["adapters"]
    assert record.report["candidates"][adapter]["function_name_and_args"]["n"] == 10
    assert record.decision["alias"] == WORKLOAD and Path(record.decision["path"]).is_file()
