"""Running the Serve app from a process: start Ray, deploy, wait for health, tear down.

`flywheel serve` and `flywheel demo` share this; tests use it through the CLI.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from flywheel.config import FlywheelConfig
from flywheel.models import resolve_model_path

APP_NAME = "flywheel"


class PortInUse(RuntimeError):
    """The HTTP port is taken on this machine: said in one line before Ray starts, not as the
    proxy actor's traceback a minute later."""


def free_port() -> int:
    """A TCP port nothing listens on right now (for tests and benchmarks)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a closing socket is no owner
        try:
            sock.bind((host, port))
        except OSError as error:
            raise PortInUse(f"{host}:{port} is taken ({error.strerror}): stop what listens there, or set "
                            "serve.port") from None


def wait_healthy(url: str, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=15).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url}/health did not answer 200 within {timeout_s:.0f} s")


def deploy(config: FlywheelConfig, timeout_s: float) -> str:
    """Deploy the app on the Ray this process is connected to; its base URL once healthy."""
    from ray import serve as ray_serve

    from serve import build_app

    ray_serve.start(http_options={"host": config.serve.host, "port": config.serve.port})
    ray_serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{config.serve.host}:{config.serve.port}"
    wait_healthy(url, timeout_s)
    return url


@contextmanager
def running_service(config: FlywheelConfig, startup_timeout_s: float = 300) -> Iterator[str]:
    """Start Ray per `config.ray`, deploy, yield the base URL, shut everything down after."""
    for model in config.serve.models:  # a missing model fails here, before Ray starts
        resolve_model_path(model.source, config.models_dir)
    if config.ray.address == "local":  # on a cluster the proxies bind on its nodes, not here
        _check_port_free(config.serve.host, config.serve.port)

    import ray
    from ray import serve as ray_serve

    from flywheel.ray_runtime import start_ray

    start_ray(config.ray)
    try:
        yield deploy(config, startup_timeout_s)
    finally:
        try:
            ray_serve.shutdown()
        finally:
            ray.shutdown()
