"""`flywheel doctor` on a home with something wrong in each place it looks. The HTTP probe
is injected (no service or hosted API runs here); the CLI runs as a user runs it."""

import json
import os
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
    assert report["where"] == "here"
    remote = subprocess.run([sys.executable, "-m", "flywheel.cli", "doctor", "--service", "--config", str(path)],
                            check=False, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert remote.returncode == 2 and remote.stderr.count("\n") == 1 and "the service is not reachable" in remote.stderr


def test_resources_say_what_would_wait_forever_and_what_an_autoscaler_could_fix(config):
    """The trap: Ray Train waits for its workers' resources without an error. The cluster's
    answer is injected (none runs here); `ray_resources` on a local instance is real."""
    def checks_with(cfg, has):
        return {check.name: check for check in run_checks(cfg, probe([]), resources=lambda ray: has)}

    def with_(**fields):
        data = config.model_dump(mode="json")
        for dotted, value in fields.items():
            section, key = dotted.split("__")
            data[section][key] = value
        return FlywheelConfig.model_validate(data)

    # cluster.yaml's shape: 2 teacher replicas and a student base on one GPU each, 2 GPU workers
    served = [{"name": "teacher", "source": "t", "num_cpus": 2, "num_gpus": 1, "num_replicas": 2},
              {"name": "small", "source": "s", "num_cpus": 2, "num_gpus": 1}]
    cluster = with_(ray__address="auto", serve__models=served, serve__aliases={}, serve__upstreams=[],
                    train__num_workers=2, train__use_gpu=True, train__cpus_per_worker=4)
    short = checks_with(cluster, {"CPU": 64.0, "GPU": 4.0})["resources"]
    assert short.status == "warn" and "beside the service needs 5 GPU (4 there)" in short.detail
    assert "autoscaler" in short.detail and "add nodes" in short.detail
    fits = checks_with(cluster, {"CPU": 16.0, "GPU": 5.0})
    assert fits["ray"].detail == "the Ray cluster at auto: 16 CPUs, 5 GPUs" and fits["resources"].status == "ok"
    assert "beside the service needs 14.25 CPU, 5 GPU" in fits["resources"].detail  # 2x2 + 2 + 0.25 ingress, 8 training
    bigger = cluster.turn.model_copy(update={"per_workload": {"support": {"candidates": [{"num_workers": 3}]}}})
    assert checks_with(cluster.model_copy(update={"turn": bigger}), {"CPU": 64.0, "GPU": 5.0})["resources"] \
        .detail.startswith("a turn's training beside the service needs 6 GPU")
    down = {check.name: check for check in run_checks(cluster, probe([]), resources=lambda ray: 1 / 0)}
    assert down["ray"].status == "fail" and "unreachable" in down["ray"].detail and "resources" not in down

    # a local instance: `flywheel turn` trains in its own, the in-service watcher beside the service
    local = with_(ray__num_cpus=3, train__cpus_per_worker=1)  # 2 models x 1 CPU + 0.25 ingress; 1 worker
    assert checks_with(local, {"CPU": 3.0, "GPU": 0.0})["resources"].status == "ok"
    watched = local.model_copy(update={"turn": local.turn.model_copy(update={"watch_in_service": True})})
    stuck = checks_with(watched, {"CPU": 3.0, "GPU": 0.0})["resources"]
    assert stuck.status == "fail" and "needs 3.25 CPU (3 there): it would wait for them forever" in stuck.detail
    assert "raise ray.num_cpus" in stuck.detail
    gpu = checks_with(with_(train__use_gpu=True), {"CPU": 3.0, "GPU": 0.0})["resources"]
    assert gpu.status == "fail" and "a turn's training needs 1 GPU (0 there)" in gpu.detail


def test_a_compiled_training_step_needs_its_toolchain_here(config, monkeypatch, tmp_path):
    """`train.compile` fails at the first training step without Inductor's toolchain; the
    doctor looks for it on this machine, and says nothing where training runs eager. PATH
    and Triton's lookup stand for a machine with and without them."""
    from flywheel import doctor

    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("g++", "gcc"):
        (tools / name).write_text("#!/bin/sh\n")
        (tools / name).chmod(0o755)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda name: object())

    def compile_check(cfg):
        return {check.name: check for check in run_checks(cfg, probe([]), resources=lambda ray: {"CPU": 8.0})
                }.get("compile")

    def train(**fields):
        return config.model_copy(update={"train": config.train.model_copy(update=fields)})

    assert compile_check(config) is None  # auto on CPU: eager
    assert compile_check(train(compile="on")).status == "ok"
    assert compile_check(train(use_gpu=True)).detail.startswith("the GPU training step is compiled")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda name: None)
    cpu = compile_check(train(compile="on"))
    assert cpu.status == "fail" and "the CPU training step is compiled" in cpu.detail
    assert "lacks a C++ compiler (g++ or clang++, or $CXX)" in cpu.detail and "train.compile: off" in cpu.detail
    gpu = compile_check(train(use_gpu=True))  # auto on GPU workers compiles
    assert gpu.status == "fail" and "lacks Triton and a C compiler for Triton" in gpu.detail
    remote = config.model_copy(update={"ray": config.ray.model_copy(update={"address": "auto"}),
                                       "train": config.train.model_copy(update={"use_gpu": True})})
    assert compile_check(remote).status == "warn"  # a cluster's workers may have what the head lacks
    assert compile_check(train(use_gpu=True, compile="off")) is None


def test_a_local_instance_counts_its_configured_cpus_and_this_machines_gpus(monkeypatch):
    import ray
    import torch

    from flywheel.config import RayConfig
    from flywheel.doctor import ray_resources

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in the CLI (the integration tier joins Ray)
    assert ray_resources(RayConfig(num_cpus=3)) == {"CPU": 3.0, "GPU": float(torch.cuda.device_count())}
    assert ray_resources(RayConfig())["CPU"] == float(os.cpu_count())


def test_low_disk_says_what_pruning_would_free(config, monkeypatch):
    from flywheel import doctor
    from flywheel.datasets import write_dataset

    monkeypatch.setattr(doctor, "LOW_DISK_BYTES", 2**62)  # every disk is low
    messages = json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a" * 600_000}])
    for turn in range(2):
        row = {"id": f"r{turn}", "label": "a", "source": "teacher", "tools": "[]", "messages": messages}
        write_dataset(config.datasets_dir, "w", {"train": [row], "val": [], "eval": [], "icl": []},
                      {"prefix": None, "created_at": 1000.0 + turn}, {"train": 1}, [])
    older = min(config.datasets_dir.glob("w/*"), key=lambda path: json.loads((path / "manifest.json").read_text())
                ["created_at"])
    size = sum(file.stat().st_size for file in older.rglob("*") if file.is_file())
    kept = config.model_copy(update={"turn": config.turn.model_copy(update={"keep_versions": 1})})
    disk = {check.name: check for check in run_checks(kept, probe([]), resources=lambda ray: {"CPU": 8.0})}["disk"]
    assert disk.status == "warn" and "`flywheel prune --keep 1 --yes` frees" in disk.detail
    assert f"frees up to {size / 2**20:.1f} MiB" in disk.detail and size > 5 * 10**5 and older.is_dir()  # a dry run


def test_bf16_pinned_on_a_cpu_without_avx512_is_named(config, monkeypatch):
    """Below AVX-512 bf16 takes slow reference code (`flywheel.hardware`): `auto` is float32 there,
    and a dtype or precision pinned to bf16 is named. The CPU's capability is monkeypatched."""
    import torch

    from flywheel import hardware

    def precision_check(cfg):
        return {check.name: check for check in run_checks(cfg, probe([]), resources=lambda ray: {"CPU": 8.0})
                }.get("precision")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_bf16_kernels", lambda: False)
    assert precision_check(config).status == "ok" and "float32" in precision_check(config).detail
    models = [config.serve.models[0].model_copy(update={"dtype": "bfloat16"}), *config.serve.models[1:]]
    pinned = config.model_copy(update={"serve": config.serve.model_copy(update={"models": models}),
                                       "train": config.train.model_copy(update={"precision": "bf16"})})
    warned = precision_check(pinned)
    assert warned.status == "warn" and "small's dtype: bfloat16, train.precision: bf16" in warned.detail
    monkeypatch.setattr(hardware, "cpu_has_bf16_kernels", lambda: True)
    assert precision_check(pinned).status == "ok" and "bf16" in precision_check(pinned).detail
    remote = pinned.model_copy(update={"ray": pinned.ray.model_copy(update={"address": "auto"})})
    assert precision_check(remote) is None  # a cluster's nodes decide for themselves
