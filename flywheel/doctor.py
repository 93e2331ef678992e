"""`flywheel doctor`: what stands between this config and a turning flywheel, checked
before a job finds out. Each check is `ok`, `warn` (works, but not as intended) or `fail`
(something will break), with the fix in its detail: models pulled, the log store
reachable, records still spooled, the service up, hosted APIs reachable with their keys,
every alias's models present, teachers that curation learns from, Ray's resources for the
service and a turn's training, the compiler a compiled training step needs, bf16 pinned
on a CPU too old for it, disk space.

Checks read and probe; none changes anything (but a first look at a SQLite store creates
it empty, as any command does, and on a low disk the pruning estimate takes each
workload's turn lock for a moment). Network probes wait `PROBE_S` at most.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Literal

import httpx

from flywheel.config import FlywheelConfig, RayConfig, TrainConfig
from flywheel.log_writer import spooled_batches

PROBE_S = 5.0
LOW_DISK_BYTES = 2 * 1024**3  # a checkpoint or a dataset version needs room


@dataclass(frozen=True)
class Check:
    name: str
    status: Literal["ok", "warn", "fail"]
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _models(config: FlywheelConfig) -> Iterator[Check]:
    from flywheel.models import ModelError, resolve_model_path

    for model in config.serve.models:
        try:
            yield Check(f"model {model.name}", "ok", str(resolve_model_path(model.source, config.models_dir)))
        except ModelError as error:
            yield Check(f"model {model.name}", "fail", str(error))


def _store(config: FlywheelConfig) -> Iterator[Check]:
    from flywheel.store import open_store

    try:
        store = open_store(config.store_url)
        try:
            yield Check("log store", "ok", f"{store.count():,} records in {config.store_url}")
        finally:
            store.close()
    except Exception as error:
        yield Check("log store", "fail", f"{config.store_url}: {type(error).__name__}: {error}")
    spooled = spooled_batches(config.spool_dir)
    yield (Check("spool", "warn", f"{spooled} batches in {config.spool_dir} wait for the store; the service "
                 "replays them once it can write") if spooled else Check("spool", "ok", "nothing waits for the store"))


def _service(config: FlywheelConfig, get: Callable[..., httpx.Response]) -> Iterator[Check]:
    url = f"{config.service_url}/health"
    try:
        health = get(url, timeout=PROBE_S)
    except httpx.HTTPError as error:
        yield Check("service", "warn", f"{url}: not running ({type(error).__name__}); `flywheel serve` starts it, "
                    "and a turn's evaluation needs it")
        return
    try:
        states = health.json().get("models", {})
    except ValueError:
        states = {}
    down = {name: state for name, state in states.items() if state != "ok"}
    if health.status_code == 200 and not down:
        yield Check("service", "ok", f"{url}: every model answers")
    else:
        yield Check("service", "fail" if health.status_code != 200 else "warn",
                    f"{url}: HTTP {health.status_code}; " + (", ".join(f"{n} {s}" for n, s in down.items()) or
                                                             "no model states"))


def _upstreams(config: FlywheelConfig, get: Callable[..., httpx.Response]) -> Iterator[Check]:
    for upstream in config.serve.upstreams:
        name = f"upstream {upstream.name}"
        key_env = upstream.api_key_env
        if key_env and not os.environ.get(key_env):
            yield Check(name, "fail", f"${key_env} is not set here: {upstream.base_url} will refuse the requests "
                        "(set it on the ingress's node too)")
            continue
        try:
            answer = get(f"{upstream.base_url}/models", headers=upstream.request_headers(), params=upstream.params,
                         timeout=PROBE_S)
        except httpx.HTTPError as error:
            yield Check(name, "warn", f"{upstream.base_url}: unreachable from here ({type(error).__name__})")
            continue
        if answer.status_code in (401, 403):
            yield Check(name, "fail", f"{upstream.base_url} refused the key in ${key_env} (HTTP {answer.status_code})")
        else:
            status = "ok" if answer.status_code < 400 else "warn"
            yield Check(name, status, f"{upstream.base_url}: GET /models answered HTTP {answer.status_code}")


def unlearned_teacher(config: FlywheelConfig, teacher: str) -> str | None:
    """Why an alias's teacher is a problem when `curate.teacher_models` does not list it;
    None when its answers are training data."""
    if not config.curate.teacher_models or teacher in config.curate.teacher_models:
        return None
    return (f"its teacher {teacher} is not in curate.teacher_models: what it answers (audits too) is not training "
            "data, and audits measure students against it")


def _routes(config: FlywheelConfig) -> Iterator[Check]:
    from flywheel.routes import adapter_exists, open_route_book

    served = {m.name for m in config.serve.models} | {u.name for u in config.serve.upstreams}
    for alias, state in sorted(open_route_book(config).aliases().items()):
        problems, notes = [], []
        if state.teacher.partition(":")[0] not in served:
            problems.append(f"its teacher {state.teacher} is not served")
        for role, model in (("student", state.student), ("candidate", state.candidate)):
            base, _, adapter = (model or "").partition(":")
            if model and not adapter_exists(config.adapters_dir, base, adapter):
                problems.append(f"its {role} {model} is gone from {config.adapters_dir} (the teacher answers "
                                f"instead; `flywheel rollback --alias {alias}` or promote another)")
        if note := unlearned_teacher(config, state.teacher):
            notes.append(note)
        where = f"mode {state.mode}, student {state.student or '-'}, teacher {state.teacher}"
        status = "fail" if problems else "warn" if notes else "ok"
        yield Check(f"alias {alias}", status, "; ".join(problems + notes) or where)


def ray_resources(config: RayConfig) -> dict[str, float]:
    """What Ray can schedule on: inside Ray (the service's ingress), its own cluster; a
    local instance gets `ray.num_cpus` (default: every core) and the GPUs this machine
    shows; a cluster answers for itself (its nodes now: an autoscaler may add more).
    Raises when the cluster cannot be reached."""
    import ray

    if ray.is_initialized():
        return dict(ray.cluster_resources())
    if config.address == "local":
        import torch

        return {"CPU": float(config.num_cpus or os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
    ray.init(address=config.address, log_to_driver=False, logging_level="ERROR")
    try:
        return dict(ray.cluster_resources())
    finally:
        ray.shutdown()


def _needs(config: FlywheelConfig) -> tuple[dict[str, float], dict[str, float]]:
    """Ray resources the service holds, and those the largest of a turn's candidates trains
    with (candidates train one after another when the cluster has room for one only)."""
    serving = {"CPU": config.serve.ingress_num_cpus + sum(m.num_replicas * m.num_cpus for m in config.serve.models),
               "GPU": sum(m.num_replicas * m.num_gpus for m in config.serve.models)}
    training = {"CPU": 0.0, "GPU": 0.0}
    for settings in _candidates(config):
        training["CPU"] = max(training["CPU"], settings.num_workers * settings.cpus_per_worker)
        training["GPU"] = max(training["GPU"], settings.num_workers * float(settings.use_gpu))
    return serving, training


def _candidates(config: FlywheelConfig) -> Iterator[TrainConfig]:
    """The training settings of every candidate any workload's turn trains."""
    for workload in [None, *config.turn.per_workload]:
        for overrides in config.turn.for_workload(workload).candidates:
            yield config.train.overridden(overrides)


def _compile_toolchain(config: FlywheelConfig) -> Iterator[Check]:
    """`train.compile` (`auto` on GPU workers, `on` anywhere) needs Inductor's toolchain where
    training runs, or the first step fails: a C++ compiler for CPU kernels; Triton and a C
    compiler (Triton builds its launcher with it) for GPU ones. Looked for on this machine,
    which trains on a local instance; a cluster's workers may differ, so there it warns."""
    compiled = {"GPU" if s.use_gpu else "CPU" for s in _candidates(config)
                if s.compile == "on" or (s.compile == "auto" and s.use_gpu)}
    if not compiled:
        return
    missing = []
    if "CPU" in compiled and not _which(os.environ.get("CXX"), "g++", "clang++"):
        missing.append("a C++ compiler (g++ or clang++, or $CXX)")
    if "GPU" in compiled and importlib.util.find_spec("triton") is None:
        missing.append("Triton")
    if "GPU" in compiled and not _which(os.environ.get("CC"), "cc", "gcc", "clang"):
        missing.append("a C compiler for Triton (gcc or clang, or $CC)")
    on = f"the {' and '.join(sorted(compiled))} training step"
    if not missing:
        yield Check("compile", "ok", f"{on} is compiled (train.compile); its toolchain is on this machine")
        return
    yield Check("compile", "fail" if config.ray.address == "local" else "warn",
                f"{on} is compiled (train.compile), but this machine lacks {' and '.join(missing)}: the first "
                "training step would fail; install it on every training node, or set train.compile: off")


def _precision(config: FlywheelConfig) -> Iterator[Check]:
    """bf16 and fp16 have fast CPU kernels only from AVX-512 up: below it, bf16 served 4x and
    trained 30x slower than float32 (`flywheel.hardware`). Looked at on this machine when a
    local instance serves and trains here; a cluster's nodes decide for themselves."""
    import torch

    from flywheel import hardware

    if config.ray.address != "local" or torch.cuda.is_available():
        return
    if hardware.cpu_has_bf16_kernels():
        yield Check("precision", "ok", "this CPU has AVX-512: `auto` serves and trains in bf16")
        return
    served = [f"{model.name}'s dtype: {model.dtype}" for model in config.serve.models
              if model.dtype in ("bfloat16", "float16")]
    trained = ["train.precision: bf16"] if any(s.precision == "bf16" and not s.use_gpu
                                               for s in _candidates(config)) else []
    if served or trained:
        yield Check("precision", "warn", f"this CPU lacks AVX-512, where bf16 and fp16 run several times slower than "
                    f"float32, but {', '.join(served + trained)}; set `auto` (float32 here)")
        return
    yield Check("precision", "ok", "this CPU lacks AVX-512: `auto` serves and trains in float32 (about 3x slower "
                "than bf16 on an AVX-512 CPU)")


def _which(*names: str | None) -> str | None:
    return next((found for name in names if name and (found := shutil.which(name))), None)


def _resources(config: FlywheelConfig, resources: Callable[[RayConfig], dict[str, float]]) -> Iterator[Check]:
    where = "a local Ray instance" if config.ray.address == "local" else f"the Ray cluster at {config.ray.address}"
    try:
        has = resources(config.ray)
    except Exception as error:
        yield Check("ray", "fail", f"{where}: unreachable ({type(error).__name__}: {error}); start it, or set "
                    "ray.address")
        return
    yield Check("ray", "ok", f"{where}: {has.get('CPU', 0):g} CPUs, {has.get('GPU', 0):g} GPUs")
    serving, training = _needs(config)
    # the watcher in the service, or any cluster, trains beside the service; a local instance
    # of `flywheel turn` is its own
    shared = config.turn.watch_in_service or config.ray.address != "local"
    stages = [("the service", serving)] + [("a turn's training" + (" beside the service" if shared else ""),
                                            {k: serving[k] * shared + training[k] for k in training})]
    grows = config.ray.address != "local"
    for what, need in stages:
        short = [f"{need[k]:g} {k} ({has.get(k, 0):g} there)" for k in need if need[k] > has.get(k, 0)]
        if short:
            fix = ("lower serve.models[].num_cpus/num_gpus/num_replicas or train.num_workers/cpus_per_worker/use_gpu"
                   + (", or add nodes" if grows else ", or raise ray.num_cpus (Ray's CPUs are logical)"
                      if need["CPU"] > has.get("CPU", 0) else ""))
            yield Check("resources", "warn" if grows else "fail",
                        f"{what} needs {' and '.join(short)}: it would wait for them "
                        f"{'until an autoscaler adds nodes' if grows else 'forever'}; {fix}")
            return
    yield Check("resources", "ok", "; ".join(f"{what} needs {need['CPU']:g} CPU, {need['GPU']:g} GPU"
                                             for what, need in stages))


def _disk(config: FlywheelConfig) -> Iterator[Check]:
    where = config.home
    while not where.exists():  # the volume it will be on (nothing is created here)
        where = where.parent
    free = shutil.disk_usage(where).free
    detail = f"{free / 1024**3:.1f} GiB free under {where}"
    if free >= LOW_DISK_BYTES:
        yield Check("disk", "ok", detail)
        return
    from flywheel.prune import prune_workload, workloads_on_disk

    keep = config.turn.keep_versions or 3  # "up to": `flywheel prune` also keeps adapters clients name
    freeable = sum(prune_workload(config, workload, keep, dry_run=True).bytes for workload in workloads_on_disk(config))
    yield Check("disk", "warn", f"{detail}: a turn writes a dataset version, adapters and checkpoints; `flywheel "
                f"prune --keep {keep} --yes` frees up to {freeable / 2**20:.1f} MiB, `turn.keep_versions` prunes hourly")


def run_checks(config: FlywheelConfig, get: Callable[..., httpx.Response] = httpx.get,
               resources: Callable[[RayConfig], dict[str, float]] = ray_resources) -> list[Check]:
    """Every check, in the order a turn meets them; `get` (the HTTP probe) and `resources`
    (what Ray can schedule on) are injected by tests."""
    return [*_models(config), *_store(config), *_service(config, get), *_upstreams(config, get),
            *_routes(config), *_resources(config, resources), *_compile_toolchain(config), *_precision(config), *_disk(config)]
