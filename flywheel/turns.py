"""Run records: one JSON file per turn of the flywheel, `<turns_dir>/<run id>.json`.

A record says where the turn is (stage, status, progress, timings), what it made
(dataset, adapters, report, decision) and what went wrong. It is written atomically after
every change, so the CLI, the HTTP endpoints and the watcher read a consistent state.

Exclusivity uses `flock`: a turn holds `<run id>.lock` and `workload-<W>.lock` while it
runs, so a run id given twice does not run twice and a workload has one turn at a time.
The kernel drops the locks when the process dies (even SIGKILL), which is how a crashed
turn becomes resumable.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from flywheel.config import MODEL_NAME, WORKLOAD_MAX_CHARS, workload_name_problem
from flywheel.file_state import exclusive, replace_file

STAGES = ("curate", "train", "evaluate", "gate")
Status = Literal["pending", "running", "succeeded", "failed", "cancelled"]


class TurnBusy(RuntimeError):
    """The run, or another turn of the same workload, is running right now."""


class StageRecord(BaseModel):
    status: Status = "pending"
    started_at: float | None = None
    finished_at: float | None = None
    seconds: float | None = None
    progress: str = ""
    artifacts: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class RunRecord(BaseModel):
    run_id: str
    workload: str
    status: Status = "pending"
    stage: str | None = Field(None, description="The stage running now, or the last one that ran.")
    stages: dict[str, StageRecord] = Field(default_factory=lambda: {name: StageRecord() for name in STAGES})
    options: dict[str, Any] = Field(default_factory=dict, description="max_steps, eval_limit, trigger...")
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    cancel_requested: bool = False
    error: str | None = None
    host: str | None = None
    pid: int | None = None

    @property
    def report(self) -> dict[str, Any] | None:
        return self.stages["evaluate"].artifacts.get("report")

    @property
    def decision(self) -> dict[str, Any] | None:
        return self.stages["gate"].artifacts.get("decision")

    def summary(self) -> dict[str, Any]:
        """What `flywheel turn --json` and the HTTP endpoints return."""
        return {**self.model_dump(mode="json"), "report": self.report, "decision": self.decision}


def new_run_id(workload: str) -> str:
    return f"{workload}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class RunBook:
    """The run records of one flywheel home."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, run_id: str) -> Path:
        if not MODEL_NAME.match(run_id):
            raise ValueError(f"run id {run_id!r}: use letters, digits, '.', '_' and '-' only")
        return self.folder / f"{run_id}.json"

    def get(self, run_id: str) -> RunRecord | None:
        path = self.path(run_id)
        return RunRecord.model_validate_json(path.read_bytes()) if path.is_file() else None

    def list(self, workload: str | None = None) -> list[RunRecord]:
        """Newest first."""
        if not self.folder.is_dir():
            return []
        records = [RunRecord.model_validate_json(p.read_bytes()) for p in self.folder.glob("*.json")]
        return sorted((r for r in records if workload is None or r.workload == workload),
                      key=lambda r: r.created_at, reverse=True)

    def save(self, record: RunRecord) -> RunRecord:
        """Write `record`, keeping a cancel request another process wrote meanwhile."""
        with self._writing(record.run_id):
            on_disk = self.get(record.run_id)
            record.cancel_requested = record.cancel_requested or bool(on_disk and on_disk.cancel_requested)
            self._write(record)
        return record

    def _write(self, record: RunRecord) -> None:
        record.updated_at = time.time()
        replace_file(self.path(record.run_id), record.model_dump_json(indent=1))

    def _writing(self, run_id: str) -> AbstractContextManager[None]:
        """Serialises read-modify-writes of one record across processes."""
        return exclusive(self.folder / f".{run_id}.write-lock")

    def create(self, workload: str, options: dict[str, Any] | None = None, run_id: str | None = None) -> RunRecord:
        if problem := workload_name_problem(workload):
            raise ValueError(f"workload {workload[:WORKLOAD_MAX_CHARS]!r}: {problem}")
        run_id = run_id or new_run_id(workload)
        if self.get(run_id) is not None:
            raise ValueError(f"run {run_id!r} exists")
        return self.save(RunRecord(run_id=run_id, workload=workload, options=dict(options or {})))

    def cancel(self, run_id: str) -> RunRecord:
        """Ask a run to stop: a pending one is cancelled now, a running one at its next check."""
        with self._writing(run_id):
            record = self.get(run_id)
            if record is None:
                raise KeyError(run_id)
            if record.status in ("succeeded", "failed", "cancelled"):
                return record
            record.cancel_requested = True
            if record.status == "pending" and not self.running(run_id):
                record.status = "cancelled"
            self._write(record)
            return record

    def running(self, run_id: str) -> bool:
        """Whether a process holds the run's lock now."""
        try:
            with self._lock(f"{run_id}.lock"):
                return False
        except TurnBusy:
            return True

    @contextmanager
    def holding(self, record: RunRecord) -> Iterator[None]:
        """Hold the run's and its workload's locks (`TurnBusy` when either is taken)."""
        with ExitStack() as stack:
            stack.enter_context(self._lock(f"{record.run_id}.lock", f"run {record.run_id} is running"))
            stack.enter_context(self.workload_idle(record.workload))
            yield

    @contextmanager
    def workload_idle(self, workload: str) -> Iterator[None]:
        """Keep turns of `workload` from starting meanwhile (`TurnBusy` when one is running)."""
        with self._lock(f"workload-{workload}.lock", f"a turn of workload {workload!r} is running"):
            yield

    @contextmanager
    def _lock(self, name: str, busy: str = "busy") -> Iterator[None]:
        with ExitStack() as stack:
            try:
                stack.enter_context(exclusive(self.folder / name, wait=False))
            except BlockingIOError:
                raise TurnBusy(busy) from None
            yield
