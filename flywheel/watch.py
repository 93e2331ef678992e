"""Turning by itself: the watcher starts a turn for a workload when enough new answers to
learn from arrived since its last turn (`turn.min_new_records`: what curation would keep as
the teacher's, so a serving student's own answers do not count, the teacher's audits of
them do), or when `turn.interval_s` passed and any such answer arrived; it also runs
turns queued over HTTP (`POST /v1/flywheel/runs` creates a pending run). One turn per
workload at a time (run-record locks), at most `turn.max_concurrent` at once. With `gate.rollout: shadow` (or `canary`) it also judges
each watched workload's alias while it is in such a trial (`gate.gate_shadow`): promoted or
withdrawn once enough live pairs exist; and with `gate.audit_demote` it judges each
serving student (or canary candidate) on the teacher's audits (`gate.gate_audit`):
demoted (withdrawn) once they clearly fall short. With `store.retention_days` it deletes
records past that age, with their rows in curated datasets, once an hour, and with
`turn.keep_versions` it prunes old dataset versions and adapters no alias needs.

`due` is the decision alone (a pure function, unit-tested); `Watcher.tick` gathers its
inputs from the store and the run records and starts what is due, each turn in a thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from flywheel.config import WORKLOAD_MAX_CHARS, FlywheelConfig, TurnConfig, workload_name_problem
from flywheel.erasure import erase
from flywheel.examples import count_ground_truth
from flywheel.gate import Decision, gate_audit, gate_shadow
from flywheel.prune import prune_workload, requested_adapters, workloads_on_disk
from flywheel.routes import open_route_book
from flywheel.store import LogFilter, LogStore
from flywheel.turns import RunBook, RunRecord, TurnBusy

logger = logging.getLogger(__name__)
# Records reach the store up to the log writer's flush (or a spool retry) after their
# timestamp: older ones are counted once and remembered, newer ones at every tick. A
# record later still (a spool replayed after a long store outage) is found by the full
# recount every RECOUNT_S.
SETTLED_S = 60.0
RECOUNT_S = 600.0
RETAIN_EVERY_S = 3600.0  # how often `store.retention_days` is applied


@dataclass(frozen=True)
class WorkloadView:
    workload: str
    new_records: int  # answers to learn from since the last turn started (all of them before any turn)
    last_turn_at: float | None  # when the workload's last turn was created
    running: bool  # a turn of the workload is running or pending


def due(settings: TurnConfig, views: list[WorkloadView], running_turns: int, now: float) -> list[tuple[str, str]]:
    """(workload, why) for each turn to start now, most new records first."""
    room = settings.max_concurrent - running_turns
    chosen = []
    for view in sorted(views, key=lambda v: v.new_records, reverse=True):
        if room <= 0 or view.running or view.new_records == 0:
            continue
        mine = settings.for_workload(view.workload)
        if view.new_records >= mine.min_new_records:
            why = f"{view.new_records} new records (>= {mine.min_new_records})"
        elif mine.interval_s and view.last_turn_at is not None and now - view.last_turn_at >= mine.interval_s:
            why = f"{now - view.last_turn_at:.0f} s since the last turn and {view.new_records} new records"
        else:
            continue
        chosen.append((view.workload, why))
        room -= 1
    return chosen


TurnRunner = Callable[[FlywheelConfig, str | None, str | None, dict], RunRecord]


class Watcher:
    """`run_turn` (injected) for what is due, in background threads."""

    def __init__(self, config: FlywheelConfig, store: LogStore, run_turn: TurnRunner):
        self.config = config
        self.store = store
        self.run_turn = run_turn
        self.book = RunBook(config.turns_dir)
        self.routes = open_route_book(config)
        self.threads: dict[str, threading.Thread] = {}  # run id -> its thread
        # workload -> (since, counted to, count, when counted afresh)
        self._tally: dict[str, tuple[float | None, float | None, int, float]] = {}
        self._unnamable: set[str] = set()  # logged workload ids no turn can have: warned about once
        self._retained_at = -RETAIN_EVERY_S

    def views(self, runs: list[RunRecord] | None = None, now: float | None = None) -> list[WorkloadView]:
        """Per workload: new answers to learn from since its last run and whether one is
        active (`runs`: the run records, newest first, when the caller has just read them)."""
        runs = self.book.list() if runs is None else runs
        now = time.time() if now is None else now
        workloads = self.config.turn.workloads or sorted(self.store.stats(LogFilter(status="ok"))["by_workload"])
        views = []
        for workload in workloads:
            if problem := workload_name_problem(workload):  # imported, or logged before the ingress checked
                if workload not in self._unnamable:
                    self._unnamable.add(workload)
                    logger.warning("workload %r never turns (%s): `flywheel logs delete --workload` removes its "
                                   "records, or import them again under another name",
                                   workload[:WORKLOAD_MAX_CHARS], problem)
                continue
            mine = [run for run in runs if run.workload == workload]
            last = mine[0].created_at if mine else None
            active = any(run.status == "pending" or self.book.running(run.run_id) for run in mine)
            views.append(WorkloadView(workload, self._ground_truth(workload, last, now), last, active))
        return views

    def _ground_truth(self, workload: str, since: float | None, now: float) -> int:
        """The workload's answers curation may learn from, logged since `since`. Those
        older than `SETTLED_S` are counted once and remembered: a tick reads only what
        arrived since the last one, not everything since the last turn (and everything
        again every `RECOUNT_S`, for records that arrived later than that)."""
        tally = self._tally.get(workload)
        if tally is None or tally[0] != since or now - tally[3] >= RECOUNT_S:
            counted_to, count, fresh_at = since, 0, now  # a first look, another turn began, or it is time
        else:
            _, counted_to, count, fresh_at = tally
        cutoff = now - SETTLED_S
        if counted_to is None or counted_to < cutoff:
            count += self._count(workload, counted_to, cutoff)
            counted_to = cutoff
        self._tally[workload] = (since, counted_to, count, fresh_at)
        return count + self._count(workload, counted_to, None)

    def _count(self, workload: str, since: float | None, until: float | None) -> int:
        window = LogFilter(workload_id=workload, status="ok", since=since, until=until)
        return count_ground_truth(self.store, window, tuple(self.config.curate.teacher_models))

    def tick(self, now: float | None = None) -> list[str]:
        """Start what is due; the run ids started."""
        self.threads = {run_id: thread for run_id, thread in self.threads.items() if thread.is_alive()}
        started = []
        runs = self.book.list()
        pending = [run for run in reversed(runs) if run.status == "pending" and not run.cancel_requested]
        for run in pending:  # queued over HTTP: oldest first
            if len(self.threads) >= self.config.turn.max_concurrent:
                break
            if run.run_id not in self.threads:
                started.append(self._start(run.workload, run.run_id, run.options))
        now = time.time() if now is None else now
        self.retain(now)
        views = self.views(runs, now)
        for workload, why in due(self.config.turn, views, len(self.threads), now):
            logger.info("starting a turn of %s: %s", workload, why)
            try:
                started.append(self._start(workload, None, {"trigger": why}))
            except Exception:  # one workload's failure to start must not hold up the others, or the trials
                logger.exception("could not start a turn of %s", workload)
        self.judge_trials([view.workload for view in views])
        return [run_id for run_id in started if run_id]

    def retain(self, now: float) -> int:
        """Apply `store.retention_days` and `turn.keep_versions` (at most once per
        `RETAIN_EVERY_S`); how many records went."""
        days, keep = self.config.store.retention_days, self.config.turn.keep_versions
        if (days is None and keep is None) or now - self._retained_at < RETAIN_EVERY_S:
            return 0
        self._retained_at = now
        if keep is not None:
            self._prune(now, keep)
        return 0 if days is None else self._expire(now, days)

    def _expire(self, now: float, days: float) -> int:
        """Erase what is older than `days`, a workload at a time: one whose turn is running
        (its curation could copy the records again) waits for the next pass."""
        expired, deleted = LogFilter(until=now - days * 86400), 0
        for workload in sorted(self.store.stats(expired)["by_workload"]):
            try:
                erasure = erase(self.config, self.store, replace(expired, workload_id=workload), remember=False)
            except TurnBusy as busy:
                logger.info("store.retention_days waits an hour: %s", busy)
                continue
            deleted += erasure.deleted
            logger.info("deleted %d records of %s logged more than %g days ago, and %d rows made from them in %d "
                        "dataset version(s) (store.retention_days)", erasure.deleted, workload, days,
                        erasure.dataset_rows, len(erasure.datasets))
        return deleted

    def _prune(self, now: float, keep: int) -> None:
        requested = requested_adapters(self.store, now)
        for workload in workloads_on_disk(self.config):
            pruned = prune_workload(self.config, workload, keep, requested=requested)
            if pruned.datasets or pruned.adapters or pruned.checkpoints:
                logger.info("pruned %s: %d dataset versions, %d adapters, %d checkpoint folders, %.1f MiB "
                            "(turn.keep_versions)", workload, len(pruned.datasets), len(pruned.adapters),
                            len(pruned.checkpoints), pruned.bytes / 2**20)

    def judge_trials(self, workloads: list[str]) -> list[Decision]:
        """Decide what live evidence settles for these workloads' aliases: trials of the
        kind the alias's `gate.rollout` starts (shadow or canary; any other is an
        operator's) and what serves under audit (with `gate.audit_demote`)."""
        decisions = []
        for alias in dict.fromkeys(self.config.gate.alias_for(workload) for workload in workloads):
            policy, judges = self.config.gate.for_alias(alias), []
            if policy.rollout != "promote":
                judges.append(lambda *args, kind=policy.rollout: gate_shadow(*args, modes=(kind,)))
            if policy.audit_demote and policy.audit_percent > 0:
                judges.append(gate_audit)
            for judge in judges:
                decision = judge(self.config, self.routes, self.store, alias)
                if decision is not None and not decision.pending:
                    logger.info("live evidence on %s for %s: %s", alias, decision.candidate, decision.outcome)
                    decisions.append(decision)
        return decisions

    def _start(self, workload: str, run_id: str | None, options: dict) -> str | None:
        if run_id is None:
            run_id = self.book.create(workload, options).run_id

        def turn() -> None:
            try:
                self.run_turn(self.config, workload, run_id, options)
            except TurnBusy as busy:
                logger.info("turn %s not started: %s", run_id, busy)
            except Exception:
                logger.exception("turn %s crashed", run_id)

        thread = threading.Thread(target=turn, name=f"turn-{run_id}", daemon=True)
        self.threads[run_id] = thread
        thread.start()
        return run_id

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                logger.exception("watcher tick failed")
            stop.wait(self.config.turn.poll_s)
