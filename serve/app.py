"""The Ray Serve application: an ingress deployment and one vLLM deployment per base model;
models another API serves (`serve.upstreams`) are forwarded by the ingress itself.

`build_app(config)` is the whole public surface. `app_builder` lets `serve run` /
`serve deploy` build the same application from a Serve config file
(`configs/serve.yaml`: `import_path: serve.app:app_builder`, `args: {config: ...}`).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

from flywheel import telemetry
from flywheel.config import FlywheelConfig, ServeConfig, load_config
from flywheel.doctor import run_checks
from flywheel.erasure import erase
from flywheel.log_writer import LogWriter
from flywheel.models import resolve_model_path
from flywheel.routes import open_route_book
from flywheel.store import open_store
from flywheel.turns import RunBook
from serve.api import classify_failure, make_api
from serve.engine import Endpoint, VLLMEngine
from serve.inference_log import InferenceLog
from serve.routing import RoutingTable
from serve.upstream import UpstreamEngine


class ModelServer:
    """A Serve replica holding one base model on vLLM; adapters load per request."""

    async def __init__(self, config: dict, model_name: str, model_path: str):
        cfg = FlywheelConfig.model_validate(config)
        self.engine = await VLLMEngine.start(cfg.model(model_name), Path(model_path), cfg.adapters_dir)

    async def respond(self, endpoint: Endpoint, body: dict, adapter: str | None) -> tuple[int, dict]:
        return await self.engine.respond(endpoint, body, adapter)

    async def stream(self, endpoint: Endpoint, body: dict, adapter: str | None):
        async for item in self.engine.stream(endpoint, body, adapter):
            yield item

    async def check_health(self) -> None:
        await self.engine.check_health()

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


class HandleEngine:
    """A `ModelEngine` backed by a Serve deployment handle to a `ModelServer`."""

    def __init__(self, handle: Any):
        self._handle = handle
        self._streaming = handle.options(stream=True)

    async def respond(self, endpoint: Endpoint, body: dict, adapter: str | None) -> tuple[int, dict]:
        return await self._handle.respond.remote(endpoint, body, adapter)

    def stream(self, endpoint: Endpoint, body: dict, adapter: str | None):
        return self._streaming.stream.remote(endpoint, body, adapter)

    async def check_health(self) -> None:
        await self._handle.check_health.remote()


def classify_serve_failure(error: BaseException) -> tuple[int, str]:
    """Ray Serve's overload and availability errors are 503s; the rest as usual."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(error, BackPressureError):
        return 503, "the model is overloaded (request queue full); retry shortly"
    if isinstance(error, (DeploymentUnavailableError, ActorDiedError, ActorUnavailableError)):
        return 503, "the model is temporarily unavailable; retry shortly"
    return classify_failure(error)


class TurnWatcher:
    """`turn.watch_in_service`: the watcher (flywheel/watch.py) as a Serve deployment, so
    the app turns the flywheel by itself; turns run in this replica's threads and use the
    cluster (Ray Data, Ray Train) from there."""

    def __init__(self, config: dict):
        import threading

        from flywheel.turn import run_turn
        from flywheel.watch import Watcher

        cfg = FlywheelConfig.model_validate(config)
        self._stop = threading.Event()

        def watch() -> None:
            store = open_store(cfg.store_url)  # opened in the thread that uses it (SQLite)
            try:
                Watcher(cfg, store, run_turn).run_forever(self._stop)
            finally:
                store.close()

        self._thread = threading.Thread(target=watch, name="flywheel-watcher", daemon=True)
        self._thread.start()

    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the watcher thread stopped")

    def __del__(self) -> None:
        if getattr(self, "_stop", None) is not None:
            self._stop.set()


class Ingress:
    """The HTTP ingress: FastAPI built per replica around handles to the model deployments."""

    def __init__(self, config: dict, models: dict[str, Any], watcher: Any = None):
        """`watcher`: the TurnWatcher handle, when one is deployed (bound here so Serve runs it)."""
        cfg = FlywheelConfig.model_validate(config)
        served = [m.name for m in cfg.serve.models] + [u.name for u in cfg.serve.upstreams]
        policies = {alias: cfg.gate.for_alias(alias) for alias in cfg.gate.per_alias}
        routing = RoutingTable(served, open_route_book(cfg), cfg.adapters_dir, audit_percent=cfg.gate.audit_percent,
                               audit_first=cfg.gate.audit_min_pairs, audits_per_alias={
                                   alias: (policy.audit_percent, policy.audit_min_pairs)
                                   for alias, policy in policies.items()})
        engines = {name: HandleEngine(handle) for name, handle in models.items()}
        engines |= {upstream.name: UpstreamEngine(upstream) for upstream in cfg.serve.upstreams}
        self._writer = None
        inference_log = None
        if cfg.serve.logging.enabled:
            self._writer = LogWriter(lambda: open_store(cfg.store_url), cfg.spool_dir,
                                     batch_size=cfg.serve.logging.batch_size,
                                     flush_interval_s=cfg.serve.logging.flush_interval_s)
            prices = (cfg.turn.teacher_price_per_mtok, cfg.turn.student_price_per_mtok)
            inference_log = InferenceLog(cfg.serve.logging, self._writer.submit,
                                         lambda workload, tokens: telemetry.student_answered(workload, tokens, *prices))
        self._api = make_api(cfg.serve, routing, engines, classify_serve_failure,
                             store=lambda: open_store(cfg.store_url), inference_log=inference_log,
                             runs=RunBook(cfg.turns_dir), decisions=cfg.decisions_dir, prices=cfg.turn,
                             erase=partial(erase, cfg),
                             doctor=lambda: run_checks(cfg))

    def __serve_build_asgi_app__(self):
        return self._api

    def __del__(self) -> None:
        """Serve calls this on graceful shutdown: write (or spool) every queued record."""
        if getattr(self, "_writer", None) is not None:
            self._writer.close()


def credentials(serve: ServeConfig) -> dict[str, Any]:
    """The admin token and API keys in force: $FLYWHEEL_ADMIN_TOKEN wins over the config;
    $FLYWHEEL_API_KEYS (comma-separated) adds keys. Resolved where the app is built, so
    replicas on any node see the same."""
    extra = [key.strip() for key in os.environ.get("FLYWHEEL_API_KEYS", "").split(",") if key.strip()]
    return {"admin_token": serve.admin_token_in_force(),
            "api_keys": [*serve.api_keys, *extra]}


def build_app(config: FlywheelConfig):
    """The Serve application for `config`: `serve.run(build_app(cfg))`.

    Model paths are resolved here, before anything is deployed, so a missing model is
    one clear error instead of a replica crash-looping.
    """
    from ray import serve as ray_serve

    payload = config.model_dump(mode="json")
    payload["serve"].update(credentials(config.serve))
    logging = {"enable_access_log": config.serve.access_log}
    models = {}
    for model in config.serve.models:
        path = resolve_model_path(model.source, config.models_dir)
        env = {"VLLM_LOGGING_LEVEL": model.log_level}  # read when vllm is first imported
        deployment = ray_serve.deployment(ModelServer).options(
            name=f"model-{model.name}",
            num_replicas=model.num_replicas,
            max_ongoing_requests=model.max_ongoing_requests,
            max_queued_requests=model.max_queued_requests,
            ray_actor_options={
                "num_cpus": model.num_cpus,
                "num_gpus": model.num_gpus,
                "runtime_env": {"env_vars": env},
            },
            health_check_period_s=10,
            health_check_timeout_s=60,
            logging_config=logging,
        )
        models[model.name] = deployment.bind(payload, model.name, str(path))
    ingress = ray_serve.deployment(ray_serve.ingress()(Ingress)).options(
        name="ingress",
        ray_actor_options={"num_cpus": config.serve.ingress_num_cpus},
        max_ongoing_requests=sum(m.max_ongoing_requests + m.max_queued_requests for m in config.serve.models)
        + sum(upstream.max_connections for upstream in config.serve.upstreams),
        logging_config=logging,
    )
    watcher = None
    if config.turn.watch_in_service:
        watcher = ray_serve.deployment(TurnWatcher).options(
            name="watcher", num_replicas=1, ray_actor_options={"num_cpus": 0}, logging_config=logging,
            health_check_period_s=30).bind(payload)
    return ingress.bind(payload, models, watcher)


def app_builder(args: dict[str, str]):
    """Entry point for Serve config files: `args: {config: configs/local.yaml}`."""
    return build_app(load_config(args.get("config", "configs/local.yaml")))
