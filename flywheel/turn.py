"""One turn of the flywheel: curate -> train candidates -> evaluate -> gate (and promote, or
start a shadow trial: `gate.rollout`).

`run_turn` keeps a run record (flywheel/turns.py) up to date at every step, so a turn can
be watched while it runs, cancelled (between stages, or mid-training: the loops end after
their current step), and resumed after a failure or a crash from its first stage that
did not finish: a finished stage's artifacts (dataset, adapters, report) are reused, and
training picks up its Ray Train checkpoints (the adapter ids are fixed when the record is
created). A run that succeeded is returned as it is, not run again.

The evaluate stage asks the running service (`config.service_url`), which must share
`config.home` with this process (same machine, or shared storage on a cluster).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from flywheel.config import FlywheelConfig
from flywheel.turns import STAGES, RunBook, RunRecord

Progress = Callable[[str, str], None]  # (stage, message)


class TurnCancelled(Exception):
    pass


def _curate(config: FlywheelConfig, record: RunRecord, report: Callable[[str], None]) -> dict[str, Any]:
    from flywheel.curation import curate_workload
    from flywheel.store import open_store

    store = open_store(config.store_url)
    try:
        dataset = curate_workload(config, store, record.workload, progress=report)
    finally:
        store.close()
    return {"dataset_id": dataset.dataset_id, "counts": dataset.counts, "messages": dataset.messages}


def _train(config: FlywheelConfig, record: RunRecord, report: Callable[[str], None]) -> dict[str, Any]:
    from flywheel.datasets import load_dataset
    from flywheel.routes import open_route_book
    from flywheel.training import Candidate, train_candidates

    dataset = load_dataset(config.datasets_dir, record.stages["curate"].artifacts["dataset_id"])
    steps = record.options.get("max_steps")
    state = open_route_book(config).get(config.gate.alias_for(record.workload))
    student = state.student.partition(":") if state and state.student else None
    turn, candidates = config.turn.for_workload(record.workload), []
    for overrides in turn.candidates:
        base = overrides.get("base_model") or config.default_base
        settings = {k: v for k, v in overrides.items() if k != "base_model"}
        if steps:
            settings["max_steps"] = steps
        if turn.warm_start and student and student[0] == base and "init_adapter" not in settings:
            settings["init_adapter"] = student[2]
        candidates.append(Candidate(base, settings))
    ids = [f"{record.run_id}-c{index}" for index in range(len(candidates))]

    def step(adapter: str, metrics: dict[str, Any]) -> None:
        report(f"{adapter}: step {metrics['step']}/{metrics['total_steps']} loss {metrics['loss']:.3f}")

    book = RunBook(config.turns_dir)
    adapters = train_candidates(config, dataset, candidates, progress=step, adapter_ids=ids,
                                cancelled=lambda: book.get(record.run_id).cancel_requested)
    return {"adapters": [adapter.adapter_id for adapter in adapters],
            "metrics": {adapter.adapter_id: adapter.metrics for adapter in adapters}}


def _evaluate(config: FlywheelConfig, record: RunRecord, report: Callable[[str], None]) -> dict[str, Any]:
    from flywheel.datasets import load_dataset
    from flywheel.evaluation import evaluate
    from flywheel.routes import open_route_book

    adapters = record.stages["train"].artifacts["adapters"]
    state = open_route_book(config).get(config.gate.alias_for(record.workload))
    incumbent = [state.student_adapter] if state and state.student else []
    settings = config.turn.for_workload(record.workload)
    names = list(dict.fromkeys([*adapters, *incumbent, *settings.baselines, "teacher"]))
    dataset = load_dataset(config.datasets_dir, record.stages["curate"].artifacts["dataset_id"])
    limit = record.options.get("eval_limit") or settings.eval_limit
    result = evaluate(config, dataset, names, limit, progress=report)
    return {"report_id": result.run_id, "report": result.summary()}


def _gate(config: FlywheelConfig, record: RunRecord, report: Callable[[str], None]) -> dict[str, Any]:
    from flywheel.evaluation import load_report
    from flywheel.gate import gate_and_promote
    from flywheel.routes import open_route_book

    evaluation = load_report(config.reports_dir, record.stages["evaluate"].artifacts["report_id"])
    adapters = record.stages["train"].artifacts["adapters"]
    alias = config.gate.alias_for(record.workload)
    metric = config.gate.for_alias(alias).metric or evaluation.primary_metric
    best = max(adapters, key=lambda name: evaluation.candidates[name].get(metric, {}).get("mean", float("-inf")))
    report(f"gating {best} for alias {alias}")
    decision = gate_and_promote(config, open_route_book(config), evaluation, best, alias)
    return {"alias": alias, "candidate": best, "promoted": decision.outcome == "promoted",
            "outcome": decision.outcome, "decision": decision.model_dump(mode="json")}


RUNNERS = {"curate": _curate, "train": _train, "evaluate": _evaluate, "gate": _gate}


def run_turn(config: FlywheelConfig, workload: str | None = None, run_id: str | None = None,
             options: dict[str, Any] | None = None, progress: Progress = lambda stage, text: None) -> RunRecord:
    """Run (or resume) a turn and return its record. `run_id` names an existing run to
    resume, or the id a new one gets; `options`: `max_steps`, `eval_limit`, `trigger`.
    Raises `TurnBusy` when the run, or another turn of the workload, is running."""
    from flywheel import telemetry

    book = RunBook(config.turns_dir)
    record = book.get(run_id) if run_id else None
    if record is None:
        if workload is None:
            raise ValueError(f"no run {run_id!r} to resume; name a workload to start one")
        record = book.create(workload, options, run_id)
    elif workload is not None and workload != record.workload:
        raise ValueError(f"run {record.run_id} is a turn of {record.workload!r}, not {workload!r}")
    if record.status in ("succeeded", "cancelled"):
        return record

    with book.holding(record):
        record = book.get(record.run_id)  # what it is now that it is ours
        record.status, record.error, record.host, record.pid = "running", None, socket.gethostname(), os.getpid()
        book.save(record)
        telemetry.turn_status(record.workload, "running")
        try:
            for name in STAGES:
                stage = record.stages[name]
                if stage.status == "succeeded":
                    continue
                if book.save(record).cancel_requested:  # saving picks up a cancel written elsewhere
                    raise TurnCancelled
                record.stage = name
                stage.status, stage.started_at, stage.error, stage.progress = "running", time.time(), None, ""
                book.save(record)

                def report(text: str, stage=stage, name=name) -> None:
                    stage.progress = text
                    book.save(record)
                    progress(name, text)

                progress(name, "started")
                stage.artifacts = RUNNERS[name](config, record, report)
                stage.status, stage.finished_at = "succeeded", time.time()
                stage.seconds = stage.finished_at - stage.started_at
                book.save(record)
                telemetry.stage_finished(record.workload, name, stage.seconds)
                progress(name, f"done in {stage.seconds:.0f} s")
            record.status = "succeeded"
            telemetry.turn_finished(record)
        except TurnCancelled:
            record.status = "cancelled"
        except Exception as error:
            stage = record.stages[record.stage] if record.stage else None
            if stage is not None and stage.status == "running":
                stage.status, stage.error = "failed", f"{type(error).__name__}: {error}"
            record.status, record.error = "failed", f"{record.stage}: {type(error).__name__}: {error}"
        finally:
            book.save(record)
            telemetry.turn_status(record.workload, record.status)
    return record
