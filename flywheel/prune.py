"""Pruning what turns leave behind, so a flywheel that turns for months keeps its disk.

Every turn writes a dataset version (a copy of the workload's curated rows), an adapter per
candidate (most never promoted) and their Ray Train checkpoints. `prune_workload` keeps,
per workload:
- the newest `keep` dataset versions and every adapter trained on them;
- every adapter the routing table names, now or in its history (rollback targets), and
  every adapter a client asked for by name (`base:adapter`) in the last `REQUESTED_DAYS`,
  each with the dataset it was trained on (curation reads kept adapters' rows to keep
  them out of eval, `datasets.trained_rows`);
and removes the other dataset versions and adapters, and the checkpoints of every adapter
whose training finished (checkpoints only resume unfinished training). It holds the
workload's turn lock, so it never runs beside a turn of that workload; evaluation
reports, decisions and run records are small and stay.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pydantic import BaseModel, Field

from flywheel.adapters import RECORD, list_adapters
from flywheel.config import FlywheelConfig
from flywheel.datasets import list_datasets
from flywheel.routes import open_route_book
from flywheel.store import LogFilter, LogStore
from flywheel.turns import RunBook, TurnBusy

REQUESTED_DAYS = 7  # an adapter a client named this recently may be named again


class Pruned(BaseModel):
    """What `prune_workload` removed (on a dry run: would remove); `flywheel prune --json` prints
    one per workload."""

    workload: str
    datasets: list[str] = Field(default_factory=list, description="Dataset versions removed.")
    adapters: list[str] = Field(default_factory=list, description="Adapters removed (never served, not recent).")
    checkpoints: list[str] = Field(default_factory=list, description="Adapters whose training checkpoints went.")
    bytes: int = Field(0, description="Disk space freed.")
    skipped: str | None = Field(None, description="Why nothing was pruned (a turn of the workload is running).")


def _size(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) if path.is_dir() else 0


def _routed_adapters(config: FlywheelConfig) -> set[str]:
    """Adapter ids the routing table (or the config, for an alias never changed) names as
    student or candidate, now or in its history."""
    book = open_route_book(config)
    states = [*book.aliases().values(), *(state for history in book.table().history.values() for state in history)]
    return {model.partition(":")[2] for state in states for model in (state.student, state.candidate) if model}


def requested_adapters(store: LogStore, now: float | None = None) -> set[str]:
    """Adapter ids clients named directly (`base:adapter`) in the last `REQUESTED_DAYS`."""
    since = (time.time() if now is None else now) - REQUESTED_DAYS * 86400
    return {model.partition(":")[2] for model in store.stats(LogFilter(since=since))["by_model"] if ":" in model}


def prune_workload(config: FlywheelConfig, workload: str, keep: int, dry_run: bool = False,
                   requested: frozenset[str] | set[str] = frozenset()) -> Pruned:
    """Remove what `workload` no longer needs (see the module); `keep` >= 1 newest versions
    stay, and so do the adapters in `requested` (`requested_adapters`)."""
    if keep < 1:
        raise ValueError("keep at least the newest dataset version (keep >= 1)")
    try:
        with RunBook(config.turns_dir).workload_idle(workload):
            return _prune(config, workload, keep, dry_run, set(requested))
    except TurnBusy as busy:
        return Pruned(workload=workload, skipped=str(busy))


def _prune(config: FlywheelConfig, workload: str, keep: int, dry_run: bool, requested: set[str]) -> Pruned:
    versions = list_datasets(config.datasets_dir, workload)  # newest first
    adapters = [adapter for adapter in list_adapters(config.adapters_dir) if adapter.workload_id == workload]
    routed = _routed_adapters(config) | requested
    recent = {version["dataset_id"] for version in versions[:keep]}
    kept = {adapter.adapter_id: adapter.dataset_id for adapter in adapters
            if adapter.adapter_id in routed or adapter.dataset_id in recent}
    needed = recent | set(kept.values())
    pruned = Pruned(workload=workload)
    doomed: list[Path] = []
    for version in versions:
        if version["dataset_id"] not in needed:
            pruned.datasets.append(version["dataset_id"])
            doomed.append(Path(version["path"]))
    for adapter in adapters:
        checkpoints = config.checkpoints_dir / adapter.adapter_id
        if adapter.adapter_id not in kept:
            pruned.adapters.append(adapter.adapter_id)
            doomed += [adapter.path, config.runs_dir / adapter.adapter_id]
        if checkpoints.is_dir():
            pruned.checkpoints.append(adapter.adapter_id)
            doomed.append(checkpoints)
    pruned.bytes = sum(_size(path) for path in doomed)
    if not dry_run:
        remove_folders(doomed)
    return pruned


def remove_folders(paths: list[Path]) -> None:
    """Unregister each first (its manifest or adapter record), so a removal cut short
    never lists a half-deleted dataset version or adapter."""
    for path in filter(Path.is_dir, paths):
        for marker in ("manifest.json", RECORD):
            (path / marker).unlink(missing_ok=True)
        shutil.rmtree(path)


def workloads_on_disk(config: FlywheelConfig) -> list[str]:
    """Every workload that has a dataset version or an adapter."""
    found = {version["workload_id"] for version in list_datasets(config.datasets_dir)}
    return sorted(found | {a.workload_id for a in list_adapters(config.adapters_dir) if a.workload_id})
