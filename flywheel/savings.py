"""What the flywheel saved, measured from the logs rather than estimated.

Every logged answer is priced by who gave it: an adapter (a fine-tuned student, whether
promoted, a canary or named directly) at `turn.student_price_per_mtok`, anything else at
`turn.teacher_price_per_mtok`. Two kinds of answer served nobody and are the flywheel's own
cost, added to what was spent: shadow answers (`tags.shadow_of`, a trial's) and evaluation
traffic (the `flywheel-eval` workload). The counterfactual prices every served token at the
teacher's price, so the saving is conservative: a student's requests often carry fewer
tokens than the teacher's would (no system prompt or tool schemas), and that difference is
not claimed. Failed requests are counted, not priced. With `logging.sample_rate` below 1
only the logged share is seen.

The Ray counter `flywheel_estimated_savings_usd` says the same while one cluster lives;
this report reads the store, so it survives restarts and covers imported history.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from flywheel.config import TurnConfig
from flywheel.evaluation import EVAL_WORKLOAD
from flywheel.store import LogFilter, LogStore

SERVED = ("teacher", "student")
KINDS = (*SERVED, "shadow", "evaluation")  # the last two: the flywheel's own cost
SCAN_ROWS = 20_000  # records per partition: bounds what one read holds in memory


def _tally() -> dict[str, Any]:
    return {kind: {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "tokens": 0, "usd": 0.0}
            for kind in KINDS} | {"errors": 0, "without_usage": 0}


def _add(tally: dict[str, Any], kind: str, usage: dict[str, Any] | None, usd_per_token: float) -> None:
    row = tally[kind]
    row["requests"] += 1
    if not usage:
        tally["without_usage"] += 1
        return
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    tokens = int(usage.get("total_tokens") or prompt + completion)
    row["prompt_tokens"] += prompt
    row["completion_tokens"] += completion
    row["tokens"] += tokens
    row["usd"] += tokens * usd_per_token


def _summed(tally: dict[str, Any], teacher_usd_per_token: float) -> dict[str, Any]:
    """The tally with `usd` spent (overhead included), `usd_all_teacher` had the teacher
    answered every served token and nothing else run, `saved_usd` and `saved_fraction`."""
    served = sum(tally[kind]["requests"] for kind in SERVED)
    spent = sum(tally[kind]["usd"] for kind in KINDS)
    all_teacher = sum(tally[kind]["tokens"] for kind in SERVED) * teacher_usd_per_token
    return tally | {"student_share": tally["student"]["requests"] / served if served else None,
                    "usd": spent, "usd_all_teacher": all_teacher, "saved_usd": all_teacher - spent,
                    "saved_fraction": (all_teacher - spent) / all_teacher if all_teacher else None}


def savings_report(store: LogStore, prices: TurnConfig, *, workload: str | None = None, since: float | None = None,
                   until: float | None = None) -> dict[str, Any]:
    """Per workload, per UTC day and in total: requests, tokens and dollars by teacher,
    student, shadow and evaluation answers, against the teacher answering all served
    traffic. Reads the store's bulk scan, a partition at a time."""
    teacher, student = prices.teacher_price_per_mtok / 1e6, prices.student_price_per_mtok / 1e6
    window = LogFilter(workload_id=workload, since=since, until=until)
    by_workload: dict[str, dict[str, Any]] = defaultdict(_tally)
    by_day: dict[str, dict[str, Any]] = defaultdict(_tally)
    total = _tally()
    partitions = max(1, -(-store.count(window) // SCAN_ROWS))
    for partition in store.partitions(window, partitions):
        for _, timestamp, workload_id, _, _, status, raw in store.scan(partition):
            day = datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d")
            tallies = (by_workload[workload_id], by_day[day], total)
            if status != "ok":
                for tally in tallies:
                    tally["errors"] += 1
                continue
            record = json.loads(raw)
            adapter = bool(record.get("adapter"))
            kind = ("evaluation" if workload_id == EVAL_WORKLOAD else "shadow" if "shadow_of" in record.get("tags", {})
                    else "student" if adapter else "teacher")
            for tally in tallies:
                _add(tally, kind, record.get("usage"), student if adapter else teacher)
    return {"workload": workload, "since": since, "until": until,
            "prices_per_mtok": {"teacher": prices.teacher_price_per_mtok, "student": prices.student_price_per_mtok},
            "total": _summed(total, teacher),
            "workloads": {name: _summed(by_workload[name], teacher) for name in sorted(by_workload)},
            "days": {day: _summed(by_day[day], teacher) for day in sorted(by_day)}}
