"""Online evaluation from shadow traffic.

While an alias is in shadow mode the teacher answers each request and the candidate
answers the same request in the background; the candidate's record names the teacher's
(`tags.shadow_of`, serve/api.py). Scoring each candidate answer against the teacher answer
to the same live request measures the candidate on the workload as it is now, before it
serves anyone, with no eval split: the same metrics the judge uses offline, the teacher's
answer as the reference. An audit is the same pair the other way round: a student answers
and the teacher answers the same request in the background (its record's `tags.role` is
`teacher`), which measures a student while it serves.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from flywheel.examples import answered_by
from flywheel.judge import Judge
from flywheel.metrics import PRIMARY
from flywheel.records import LogRecord, is_audit
from flywheel.stats import interval
from flywheel.store import LogFilter, LogStore, every_record

PAGE = 500


def _message(record: LogRecord) -> dict[str, Any] | None:
    choices = (record.response or {}).get("choices") or []
    return choices[0].get("message") if choices else None


def shadow_pairs(store: LogStore, workload: str | None, *, since: float | None = None, limit: int = 2000,
                 candidate: str | None = None, alias: str | None = None
                 ) -> dict[str, list[tuple[LogRecord, LogRecord]]]:
    """(teacher record, candidate record) pairs of `workload` (None: all), newest first, at most
    `limit` in all, grouped by the candidate (or audited student) that answered
    (`base:adapter`; only `candidate` when given). `alias` keeps the requests that named
    it, and the store filters on that, so a trial's scan reads its alias's traffic, not
    everyone's. A shadow that failed is kept (it scores as a wrong answer); one whose
    teacher answer failed or is gone is skipped: there is nothing to compare with."""
    pairs: dict[str, list[tuple[LogRecord, LogRecord]]] = defaultdict(list)
    found = 0
    for record in every_record(store, LogFilter(workload_id=workload, model=alias, since=since), "desc", PAGE):
        if found >= limit:
            break
        if "shadow_of" not in record.tags:
            continue
        audit = is_audit(record.tags)
        if not audit and candidate is not None and answered_by(record) != candidate:
            continue  # another candidate's shadow: no need to fetch its teacher answer
        linked = store.get(record.tags["shadow_of"])
        teacher, answer = (record, linked) if audit else (linked, record)
        if answer is None:
            continue
        name = answered_by(answer)
        if candidate is not None and name != candidate:
            continue
        if teacher is None or teacher.status != "ok" or _message(teacher) is None:
            continue
        pairs[name].append((teacher, answer))
        found += 1
    return dict(pairs)


def serving_attempts(store: LogStore, alias: str, model: str, *, since: float | None = None,
                     limit: int = 2000) -> tuple[int, int]:
    """(attempts, failed) over the newest `limit` requests to `alias` that `model`
    (`base:adapter`) answered itself, not in the background: how often a serving student
    or canary candidate failed a request the teacher then answered (`tags.fallback_of`).
    A failure the teacher failed too is left out: the engine, not the student, was down.
    Failures never get an audit, so the audited score cannot show them."""
    attempts = failed = 0
    rescued: set[str] = set()  # failed attempts the teacher answered; its record is the newer
    for record in every_record(store, LogFilter(model=alias, since=since), "desc", PAGE):
        if attempts >= limit:
            break
        if "fallback_of" in record.tags and record.status == "ok":
            rescued.add(record.tags["fallback_of"])
        if not record.adapter or answered_by(record) != model or "shadow_of" in record.tags:
            continue
        if record.status == "ok" or record.id in rescued:
            attempts += 1
            failed += record.status != "ok"
    return attempts, failed


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def shadow_report(store: LogStore, workload: str | None, *, since: float | None = None, limit: int = 2000,
                  judge: Judge | None = None, candidate: str | None = None, alias: str | None = None
                  ) -> dict[str, Any]:
    """Per candidate: each metric's mean and 95% interval over its shadow pairs (a failed
    answer scores as wrong; `errors` counts them), and the latency and tokens of its
    answers beside the teacher's. `primary_metric` is the one the gate reads: tool calling
    when most requests offered tools, text otherwise (as curation types a workload)."""
    judge = judge or Judge(embeddings=False)
    candidates, offered, total = {}, 0, 0
    for name, pairs in shadow_pairs(store, workload, since=since, limit=limit, candidate=candidate,
                                     alias=alias).items():
        offered += sum(bool(primary.request.get("tools")) for primary, _ in pairs)
        total += len(pairs)
        scores = judge.score([{"id": shadow.id, "label": name, "request": shadow.request,
                               "reference": _message(primary), "answer": _message(shadow)}
                              for primary, shadow in pairs])
        metrics = sorted({key for score in scores for key, value in score.items() if isinstance(value, float)})
        answered = [(primary, shadow) for primary, shadow in pairs if shadow.status == "ok"]
        candidates[name] = {
            "n": len(pairs),
            "errors": len(pairs) - len(answered),
            "metrics": {metric: interval([score[metric] for score in scores if metric in score])
                        for metric in metrics},
            "latency_ms": {"teacher": _mean([p.latency_ms for p, _ in answered if p.latency_ms is not None]),
                           "candidate": _mean([s.latency_ms for _, s in answered if s.latency_ms is not None])},
            "tokens": {"teacher": _mean([(p.usage or {}).get("total_tokens", 0) for p, _ in answered]),
                       "candidate": _mean([(s.usage or {}).get("total_tokens", 0) for _, s in answered])}}
    return {"workload": workload, "alias": alias, "since": since,
            "primary_metric": PRIMARY["tool_calling" if total and offered >= total / 2 else "generic"],
            "candidates": candidates}
