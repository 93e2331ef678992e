"""`train_lora` / `train_candidates`: LoRA fine-tuning on Ray Train, one `TorchTrainer`
per candidate (base model x hyperparameters), concurrently when the cluster has room.

Each trainer runs `flywheel.sft.run_sft` on every worker (DDP: gloo on CPU, NCCL on GPU),
keeps checkpoints under `<runs_dir>/<adapter id>/`, and restarts from the latest one when
a worker dies (`train.max_failures`). Rank 0 writes the adapter straight into the
service's adapter folder, where it is servable as `<base>:<adapter id>` with no
conversion, and the `AdapterVersion` is recorded beside it. Live progress: rank 0 appends
each step's metrics to `progress.jsonl` in the run folder; `progress` gets them here.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel.adapters import AdapterVersion
from flywheel.config import FlywheelConfig, TrainConfig
from flywheel.datasets import DatasetVersion
from flywheel.models import resolve_model_path
from flywheel.sft import ADAPTER_WEIGHTS, run_sft

Progress = Callable[[str, dict[str, Any]], None]  # (adapter id, step metrics)
STOP_FILE = "STOP"  # in a candidate's run dir: its loop ends after the current step


@dataclass
class Candidate:
    base_model: str | None = None  # default: the first model in serve.models
    overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields


@dataclass
class _Plan:
    adapter_id: str
    base: str
    hyperparameters: dict[str, Any]
    output_dir: Path
    run_dir: Path
    trainer: Any


class RaySession:
    """`flywheel.sft.Session` for a Ray Train worker."""

    def __init__(self):
        import ray.train

        context = ray.train.get_context()
        self.world_rank, self.world_size = context.get_world_rank(), context.get_world_size()

    def prepare_model(self, model: Any) -> Any:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint))
                         if checkpoint is not None else None)

    def latest_checkpoint(self) -> Path | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        return Path(checkpoint.to_directory()) if checkpoint is not None else None


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    """What each Ray Train worker runs. Its pid goes to `<run>/workers/rank-N.pid`, so an
    operator (or a test) can see which processes are training."""
    session = RaySession()
    workers = Path(cfg["run_dir"]) / "workers"
    workers.mkdir(parents=True, exist_ok=True)
    (workers / f"rank-{session.world_rank}.pid").write_text(str(os.getpid()))
    run_sft(cfg, session)


def _resolved(config: FlywheelConfig, candidate: Candidate) -> tuple[str, TrainConfig]:
    base = candidate.base_model or config.default_base
    served = config.model(base)
    settings = config.train.overridden(candidate.overrides)
    if settings.lora_r > served.max_lora_rank:
        raise ValueError(f"train.lora_r {settings.lora_r} exceeds {base}'s served max_lora_rank "
                         f"{served.max_lora_rank}: the adapter could not be served")
    if settings.init_adapter and not (config.adapters_dir / base / settings.init_adapter / ADAPTER_WEIGHTS).is_file():
        raise ValueError(f"train.init_adapter {settings.init_adapter!r}: no such adapter for {base}")
    return base, settings


def _follow(paths: dict[str, Path], progress: Progress | None, cancelled: Callable[[], bool] | None,
            stop_files: list[Path], finished: threading.Event) -> None:
    """Until `finished`: pass new progress lines on, and once `cancelled()` says so, create
    the stop files the training loops look for."""
    offsets = dict.fromkeys(paths, 0)
    while not finished.wait(0.5):
        if cancelled is not None and cancelled():
            for path in stop_files:
                path.touch()
            cancelled = None
        for adapter_id, path in paths.items():
            if progress is None or not path.is_file():
                continue
            with path.open() as handle:
                handle.seek(offsets[adapter_id])
                for line in handle:
                    if line.endswith("\n"):
                        progress(adapter_id, json.loads(line))
                        offsets[adapter_id] += len(line.encode())


def train_candidates(config: FlywheelConfig, dataset: DatasetVersion, candidates: list[Candidate],
                     progress: Progress | None = None, adapter_ids: list[str] | None = None,
                     cancelled: Callable[[], bool] | None = None) -> list[AdapterVersion]:
    """Train every candidate (concurrently; Ray queues what does not fit) and register the
    adapters, in the order given. Given `adapter_ids` (one per candidate), a run that
    stopped part-way resumes from its latest checkpoint: Ray Train finds it by run name.
    Once `cancelled()` is true (polled twice a second), every loop ends after its current
    step and keeps what it learned (metrics `stopped: requested`)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from flywheel.chat_templates import chat_template_path

    stamp = time.strftime("%Y%m%d-%H%M%S")
    plans = []
    for index, candidate in enumerate(candidates):
        base, settings = _resolved(config, candidate)
        served = config.model(base)
        hyperparameters = settings.model_dump(mode="json")
        digest = hashlib.sha256(json.dumps([base, hyperparameters], sort_keys=True).encode()).hexdigest()[:6]
        adapter_id = adapter_ids[index] if adapter_ids else f"{dataset.workload_id}-{stamp}-{index}{digest}"
        run_dir = config.runs_dir / adapter_id
        run_dir.mkdir(parents=True, exist_ok=True)
        loop = {**hyperparameters, "model_path": str(resolve_model_path(served.source, config.models_dir)),
                "dataset_path": str(dataset.path), "output_dir": str(config.adapters_dir / base / adapter_id),
                "progress_file": str(run_dir / "progress.jsonl"), "run_dir": str(run_dir),
                "stop_file": str(run_dir / STOP_FILE),
                "init_adapter_path": str(config.adapters_dir / base / settings.init_adapter)
                if settings.init_adapter else None,
                "chat_template": Path(chat_template_path(served.chat_template or "chatml_tools")).read_text()}
        trainer = TorchTrainer(
            train_loop_per_worker, train_loop_config=loop,
            scaling_config=ScalingConfig(num_workers=settings.num_workers, use_gpu=settings.use_gpu,
                                         resources_per_worker={"CPU": settings.cpus_per_worker}),
            run_config=RunConfig(name=adapter_id, storage_path=str(config.checkpoints_dir),
                                 failure_config=FailureConfig(max_failures=settings.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)))
        plans.append(_Plan(adapter_id, base, hyperparameters, Path(loop["output_dir"]), run_dir, trainer))

    for plan in plans:  # a stop asked of an earlier attempt is not this one's
        (plan.run_dir / STOP_FILE).unlink(missing_ok=True)
    finished = threading.Event()
    follower = threading.Thread(target=_follow, args=({p.adapter_id: p.run_dir / "progress.jsonl" for p in plans},
                                                      progress, cancelled, [p.run_dir / STOP_FILE for p in plans],
                                                      finished), daemon=True)
    follower.start()
    try:
        with ThreadPoolExecutor(max_workers=len(plans)) as pool:
            results = list(pool.map(lambda plan: plan.trainer.fit(), plans))
    finally:
        finished.set()
        follower.join()
    versions = []
    prefix = dataset.manifest().get("prefix")
    for plan, result in zip(plans, results, strict=True):
        version = AdapterVersion(adapter_id=plan.adapter_id, base_model=plan.base, workload_id=dataset.workload_id,
                                 dataset_id=dataset.dataset_id,
                                 dataset_hash=dataset.content_hash, hyperparameters=plan.hyperparameters,
                                 metrics=dict(result.metrics or {}), path=plan.output_dir, prefix=prefix)
        version.save()
        versions.append(version)
    return versions


def train_lora(config: FlywheelConfig, dataset: DatasetVersion, base_model: str | None = None,
               overrides: dict[str, Any] | None = None, progress: Progress | None = None) -> AdapterVersion:
    """One candidate: `train_candidates` with a single entry."""
    return train_candidates(config, dataset, [Candidate(base_model, overrides or {})], progress)[0]
