"""Deleting logged inferences together with what was derived from them.

An erasure names the records by client, workload, model, age, or a text they hold (a
person's email: the client id names an application, not who typed into it). A logged
answer lives on in the dataset versions curated from it (copies: redacted, not
anonymous) and in the adapters trained on those (weights cannot unlearn a row). `erase`
removes the records' rows (by record id) from every dataset version first and deletes
the records from the store last, so a run that stops halfway finds the same records
again and finishes. It holds the records' workloads' turn locks meanwhile: a turn
curating one of them could copy the records into a new version after they were looked
for. It names the adapters that learned from a removed row, for the operator to retrain
or retire, or retires them itself (`retire_adapters`): out of every alias, then off the
disk. Evaluation reports, decisions and turn records hold record ids, not content. The
store remembers the erasure (`LogStore.delete` leaves a tombstone), so records a replica
had queued or spooled, or a later re-import, do not bring the records back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

from pydantic import BaseModel, Field

from flywheel.adapters import list_adapters
from flywheel.config import FlywheelConfig
from flywheel.datasets import list_datasets, remove_rows, row_ids
from flywheel.prune import remove_folders
from flywheel.records import LogRecord
from flywheel.routes import open_route_book
from flywheel.store import LogFilter, LogStore, record_text
from flywheel.turns import RunBook

SCAN_CHUNK = 50_000  # records per slice of the id scan (SQLite reads a slice whole)
MIN_CONTAINS = 3  # characters of an erasure's text (an email, a name, an account number)
LEARNED_FROM = ("train", "val")  # the splits an adapter's weights depend on (see datasets.trained_rows)


def _skeleton(request: dict, kind: str, answer: dict) -> str:
    """The stored JSON of a record with every value empty: its field names and roles."""
    return record_text(LogRecord(
        id="", timestamp=0, workload_id="", client_id="", model="", request=request,
        response={"id": "", "object": kind, "created": 0, "model": "",
                  "choices": [{"index": 0, **answer, "finish_reason": "stop"}]},
        usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}))


# a text found in either would match nearly every chat, or every completions, record
SKELETONS = (
    _skeleton({"model": "", "messages": [{"role": "system", "content": ""}, {"role": "user", "content": ""}]},
              "chat.completion", {"message": {"role": "assistant", "content": ""}}),
    _skeleton({"model": "", "prompt": ""}, "text_completion", {"text": ""}))


class Erasure(BaseModel):
    """What `erase` found and did; `flywheel logs delete --json` prints it."""

    matched: int = Field(description="Records the filter matched in the store.")
    deleted: int = Field(description="Records deleted from the store (0 on a dry run).")
    datasets: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Dataset id -> rows removed per split (would be, on a dry run).")
    remembered: bool = Field(
        default=False, description="The store keeps a tombstone for this erasure (it names a client, workload, "
        "model, status or text): copies of these records that arrive later (queued, spooled, re-imported) are dropped.")
    adapters: list[str] = Field(
        default_factory=list, description="Adapters trained on a removed train or val row, or warm-started from one "
        "that was: their weights may still reflect the erased records; retrain or retire them.")
    retired: list[str] = Field(
        default_factory=list, description="Of those, the adapters removed (with `retire_adapters`): taken out of "
        "every alias's routes and rollback history, then deleted with their checkpoints.")
    aliases: list[str] = Field(
        default_factory=list, description="Aliases a retired adapter was serving or on trial in: the student, else "
        "the teacher, answers them now.")

    @property
    def dataset_rows(self) -> int:
        """Dataset rows removed, over every version and split."""
        return sum(sum(hits.values()) for hits in self.datasets.values())


def erasure_filter(workload_id: str | None = None, client_id: str | None = None, model: str | None = None,
                   older_than_days: float | None = None, contains: str | Sequence[str] | None = None,
                   now: float | None = None) -> LogFilter:
    """The records an erasure names (with several texts: those holding any of them); a
    ValueError when it names none (deleting every record takes naming them all, e.g.
    `older_than_days=0`) or names a text shorter than `MIN_CONTAINS` characters (one that
    short would match most records) or one nearly every record holds (`SKELETONS`)."""
    texts = [contains] if isinstance(contains, str) else list(contains or [])
    if workload_id is None and client_id is None and model is None and older_than_days is None and not texts:
        raise ValueError("name what to delete: a workload, a client, a model, a text and/or an age in days")
    if any(len(text.strip()) < MIN_CONTAINS for text in texts):
        raise ValueError(f"a text to look for needs at least {MIN_CONTAINS} characters besides spaces")
    for text in texts:
        if any(needle in skeleton for needle in LogFilter(contains=text).needles for skeleton in SKELETONS):
            raise ValueError(f"{text!r} is part of the records' structure (field names, roles): it would match "
                             "nearly all of them; name what only the person's records say")
    until = None if older_than_days is None else (time.time() if now is None else now) - older_than_days * 86400
    return LogFilter(workload_id=workload_id, client_id=client_id, model=model, until=until,
                     contains=tuple(texts) or None)


def erase(config: FlywheelConfig, store: LogStore, filter: LogFilter, dry_run: bool = False,
          keep_datasets: bool = False, retire_adapters: bool = False, remember: bool = True,
          progress: Callable[[str], None] = lambda _: None) -> Erasure:
    """Delete the records `filter` matches and their rows in the dataset versions of their
    workloads (none with `keep_datasets`), and with `retire_adapters` the adapters that
    learned from those rows. With `dry_run`, only count. It holds the turn lock of each of
    those workloads, so no turn curates them again meanwhile and no other erasure rewrites
    the same versions: `TurnBusy` when a turn of one is running. `remember`: whether the
    store keeps a tombstone (`LogStore.delete`)."""
    matched, touched, found_ids = _found(store, filter)
    remembered = not dry_run and remember and filter.names_records
    if not matched:  # none stored yet, but some may still be queued or spooled: the tombstone stops those
        return Erasure(matched=0, deleted=0 if dry_run else store.delete(filter, remember), remembered=remembered)
    removed: dict[str, dict[str, int]] = {}
    with ExitStack() as held:
        if not dry_run and not keep_datasets:
            book = RunBook(config.turns_dir)
            for workload in touched:
                held.enter_context(book.workload_idle(workload))
        versions = [] if keep_datasets else [version for workload in touched
                                             for version in list_datasets(config.datasets_dir, workload)]
        if versions:
            # only the ids some version holds: memory stays bounded by the datasets, not the store
            held_ids = {row_id for version in versions for ids_in in row_ids(Path(version["path"])).values()
                        for row_id in ids_in}
            if found_ids is not None:
                ids = found_ids & held_ids
            else:
                progress(f"reading the ids of {matched:,} records")
                parts = store.partitions(filter, -(-matched // SCAN_CHUNK))  # a scan holds one slice in memory
                ids = {row[0] for partition in parts for row in store.scan(partition) if row[0] in held_ids}
            for number, manifest in enumerate(versions, 1):
                progress(f"dataset {number}/{len(versions)}: {manifest['dataset_id']}")
                hits = remove_rows(Path(manifest["path"]), ids, dry_run)
                if any(hits.values()):
                    removed[manifest["dataset_id"]] = {split: count for split, count in hits.items() if count}
        deleted = 0 if dry_run else store.delete(filter, remember)
        learned = {dataset_id for dataset_id, hits in removed.items() if any(split in hits for split in LEARNED_FROM)}
        erasure = Erasure(matched=matched, deleted=deleted, datasets=removed, remembered=remembered,
                          adapters=_learned_from(config.adapters_dir, learned))
        if retire_adapters and not dry_run and erasure.adapters:
            erasure.aliases, erasure.retired = _retire(config, erasure.adapters)
    return erasure


def _found(store: LogStore, filter: LogFilter) -> tuple[int, list[str], set[str] | None]:
    """How many records `filter` matches, their workloads and, for a text filter, their
    ids. No index helps a text, so one read finds all three, where a count, stats and a
    scan would each read every record again (a person's records are few)."""
    if filter.contains is None:
        matched = store.count(filter)
        return matched, sorted(store.stats(filter)["by_workload"]) if matched else [], None
    rows = [(row[0], row[2]) for partition in store.partitions(filter, 1) for row in store.scan(partition)]
    return len(rows), sorted({workload for _, workload in rows}), {record_id for record_id, _ in rows}


def _retire(config: FlywheelConfig, adapter_ids: list[str]) -> tuple[list[str], list[str]]:
    """Routes first (no request is sent to an adapter being deleted), then the files; the
    engines stat an adapter's files per request, so a deleted one answers 404 by name. The
    routes' reason names no criteria: the tombstone is the one record of whom was erased."""
    aliases = open_route_book(config).retire(set(adapter_ids), "retired: it learned from erased records")
    adapters = {adapter.adapter_id: adapter for adapter in list_adapters(config.adapters_dir)}
    retired = [adapter_id for adapter_id in adapter_ids if adapter_id in adapters]
    remove_folders([path for adapter_id in retired for path in (
        adapters[adapter_id].path, config.runs_dir / adapter_id, config.checkpoints_dir / adapter_id)])
    return aliases, retired


def _learned_from(adapters_dir: Path, dataset_ids: set[str]) -> list[str]:
    """The adapters trained on one of these dataset versions, and those warm-started from
    one of them (`train.init_adapter`), oldest first."""
    if not dataset_ids:
        return []
    tainted: list[str] = []
    for adapter in reversed(list_adapters(adapters_dir)):
        if adapter.dataset_id in dataset_ids or adapter.hyperparameters.get("init_adapter") in tainted:
            tainted.append(adapter.adapter_id)
    return tainted
