"""The flywheel's Ray metrics (`ray.util.metrics`), shown on the Ray dashboard and exported
to Prometheus from every node's metrics agent (`ray.metrics_export_port`).

Names as Prometheus sees them carry Ray's `ray_` prefix (counters also get `_total`):
- `flywheel_records_logged{workload, role}` — inferences handed to the log writer
- `flywheel_log_spool_batches`, `flywheel_store_lag_seconds` — what waits for the store,
  and how old the newest written batch's first record was when it was written
- `flywheel_student_tokens{workload}`, `flywheel_estimated_savings_usd{workload}` — tokens
  students answered, times the teacher/student price difference from `turn.*_price_per_mtok`
- `flywheel_turns{workload, status}`, `flywheel_stage_seconds{workload, stage}` — turns by
  status; stage durations (histogram)
- `flywheel_candidate_score{workload, candidate, metric}` — the latest turn's scores
- `flywheel_promoted{alias, model}` — 1 for what each alias's student is now, 0 for the former
- `flywheel_gate_decisions{alias, outcome}` — recorded gate decisions: promoted, shadow trial,
  withdrawn, unchanged, demoted, refused
- `flywheel_shadow_pairs{alias, candidate}`, `flywheel_shadow_score{alias, candidate}` — a shadow
  trial's (or an audited student's) live pairs so far and its score on them, as of the
  watcher's latest look
- `flywheel_shadows_skipped{alias, role}` — background answers (a trial's candidate, the
  teacher's audit) not run because `serve.shadow_max_in_flight` were running
- `flywheel_fallbacks{alias, role}` — requests a student (or a canary's candidate) failed
  that the alias's teacher answered instead
- `flywheel_upstream_retries{model, reason}` — requests to a hosted model's API retried,
  by why (`HTTP 429`, `ConnectError`, ...)

Every function does nothing outside a Ray process, so library code calls them freely.
"""

from __future__ import annotations

from typing import Any

_metrics: dict[str, Any] = {}
STAGE_BOUNDARIES = [1, 10, 60, 300, 900, 3600, 4 * 3600]


def _metric(kind: str, name: str, description: str, tags: tuple[str, ...], **extra: Any) -> Any | None:
    import ray

    if not ray.is_initialized():
        return None
    if name not in _metrics:
        from ray.util import metrics

        _metrics[name] = getattr(metrics, kind)(name, description=description, tag_keys=tags, **extra)
    return _metrics[name]


def record_logged(workload: str, role: str | None) -> None:
    counter = _metric("Counter", "flywheel_records_logged", "Inferences handed to the log writer.",
                      ("workload", "role"))
    if counter is not None:
        counter.inc(1, tags={"workload": workload, "role": role or "direct"})


def student_answered(workload: str, tokens: int, teacher_price_per_mtok: float,
                     student_price_per_mtok: float) -> None:
    tokens_counter = _metric("Counter", "flywheel_student_tokens", "Tokens answered by promoted students.",
                             ("workload",))
    if tokens_counter is None or tokens <= 0:
        return
    tokens_counter.inc(tokens, tags={"workload": workload})
    saved = tokens * max(0.0, teacher_price_per_mtok - student_price_per_mtok) / 1e6
    _metric("Counter", "flywheel_estimated_savings_usd", "Student tokens x (teacher - student price).",
            ("workload",)).inc(saved, tags={"workload": workload})


def log_writer_state(spooled_batches: int, lag_s: float | None) -> None:
    spool = _metric("Gauge", "flywheel_log_spool_batches", "Batches spooled on disk, waiting for the store.", ())
    if spool is None:
        return
    spool.set(spooled_batches)
    if lag_s is not None:
        _metric("Gauge", "flywheel_store_lag_seconds", "Age of a batch's first record when it was stored.",
                ()).set(lag_s)


def turn_status(workload: str, status: str) -> None:
    counter = _metric("Counter", "flywheel_turns", "Turns by status (running counts starts).", ("workload", "status"))
    if counter is not None:
        counter.inc(1, tags={"workload": workload, "status": status})


def stage_finished(workload: str, stage: str, seconds: float) -> None:
    histogram = _metric("Histogram", "flywheel_stage_seconds", "Duration of a turn's stages.", ("workload", "stage"),
                        boundaries=STAGE_BOUNDARIES)
    if histogram is not None:
        histogram.observe(seconds, tags={"workload": workload, "stage": stage})


def turn_finished(record: Any) -> None:
    """The latest scores of the turn's candidates."""
    gauge = _metric("Gauge", "flywheel_candidate_score", "Latest evaluated score per candidate and metric.",
                    ("workload", "candidate", "metric"))
    report = record.report
    if gauge is None or not report:
        return
    for candidate, by_metric in report["candidates"].items():
        for metric, summary in by_metric.items():
            gauge.set(summary["mean"], tags={"workload": record.workload, "candidate": candidate, "metric": metric})


def promoted(alias: str, model: str, former: str | None) -> None:
    gauge = _metric("Gauge", "flywheel_promoted", "1 for each alias's current student.", ("alias", "model"))
    if gauge is None:
        return
    if former and former != model:
        gauge.set(0, tags={"alias": alias, "model": former})
    gauge.set(1, tags={"alias": alias, "model": model})


def decided(alias: str, outcome: str) -> None:
    counter = _metric("Counter", "flywheel_gate_decisions", "Recorded gate decisions by outcome.", ("alias", "outcome"))
    if counter is not None:
        counter.inc(1, tags={"alias": alias, "outcome": outcome})


def shadow_trial(alias: str, candidate: str, pairs: int, score: float | None) -> None:
    """A shadow trial's candidate, or an audited student (flywheel/gate.py), on live pairs."""
    pairs_gauge = _metric("Gauge", "flywheel_shadow_pairs", "Live pairs against the teacher so far: a shadow "
                          "trial's, or an audited student's.", ("alias", "candidate"))
    if pairs_gauge is None:
        return
    tags = {"alias": alias, "candidate": candidate}
    pairs_gauge.set(pairs, tags=tags)
    if score is not None:
        _metric("Gauge", "flywheel_shadow_score", "A shadow candidate's or audited student's score against the "
                "teacher's live answers.", ("alias", "candidate")).set(score, tags=tags)


def shadow_skipped(alias: str | None, role: str) -> None:
    counter = _metric("Counter", "flywheel_shadows_skipped", "Background answers (a trial's candidate, the "
                      "teacher's audit) skipped: serve.shadow_max_in_flight were running.", ("alias", "role"))
    if counter is not None:
        counter.inc(1, tags={"alias": alias or "", "role": role})


def fell_back(alias: str | None, role: str) -> None:
    counter = _metric("Counter", "flywheel_fallbacks", "Requests a student (or a canary's candidate) failed, "
                      "answered by the alias's teacher instead.", ("alias", "role"))
    if counter is not None:
        counter.inc(1, tags={"alias": alias or "", "role": role})


def upstream_retried(model: str, reason: str) -> None:
    counter = _metric("Counter", "flywheel_upstream_retries", "Requests to a hosted model's API retried, by why.",
                      ("model", "reason"))
    if counter is not None:
        counter.inc(1, tags={"model": model, "reason": reason})
