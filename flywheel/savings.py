"""What the flywheel saved, measured from the logs rather than estimated.

Every logged answer is priced by who gave it. A model with its own prices
(`serve.models[].price_per_mtok`, `serve.upstreams[].price_per_mtok`) costs its input and
output prices; otherwise an adapter (a fine-tuned student, whether promoted, a canary or
named directly) costs `turn.student_price_per_mtok` per token, anything else
`turn.teacher_price_per_mtok`. Three kinds of answer served nobody and are the flywheel's
own cost, added to what was spent: a shadow trial's candidate answers (`tags.shadow_of`),
the teacher's audits of a serving student (`tags.shadow_of` with `role: teacher`) and
evaluation traffic (the `flywheel-eval` workload). The counterfactual prices every served
token at the teacher's price (the workload's teacher: the model that answered most of it
without an adapter), so the saving is conservative: a student's requests often carry fewer
tokens than the teacher's would (no system prompt or tool schemas), and that difference is
not claimed. Failed requests are counted, not priced. With `logging.sample_rate` below 1
only the logged share is seen.

The Ray counter `flywheel_estimated_savings_usd` says the same while one cluster lives;
this report reads the store, so it survives restarts and covers imported history.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flywheel.config import Price, TurnConfig
from flywheel.evaluation import EVAL_WORKLOAD
from flywheel.records import is_audit
from flywheel.store import LogFilter, LogStore

SERVED = ("teacher", "student")
KINDS = (*SERVED, "shadow", "audit", "evaluation")  # the last three: the flywheel's own cost
SCAN_ROWS = 20_000  # records per partition: bounds what one read holds in memory


def _tally() -> dict[str, Any]:
    return {kind: {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "tokens": 0, "usd": 0.0}
            for kind in KINDS} | {"errors": 0, "without_usage": 0, "usd_all_teacher": 0.0}


def _cost(prompt: int, completion: int, tokens: int, price: Price | float) -> float:
    """USD for the tokens: a model's input/output prices, or one flat price per token."""
    if isinstance(price, Price):
        return (prompt * price.input + completion * price.output) / 1e6
    return tokens * price / 1e6


def _add(tally: dict[str, Any], kind: str, usage: dict[str, Any] | None, price: Price | float) -> None:
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
    row["usd"] += _cost(prompt, completion, tokens, price)


def _merge(into: dict[str, Any], cell: dict[str, Any]) -> None:
    for key, value in cell.items():
        if isinstance(value, dict):
            _merge(into[key], value)
        else:
            into[key] += value


def _summed(tally: dict[str, Any]) -> dict[str, Any]:
    """The tally with `usd` spent (overhead included), `student_share` of served requests,
    `saved_usd` and `saved_fraction` against `usd_all_teacher`."""
    served = sum(tally[kind]["requests"] for kind in SERVED)
    spent, all_teacher = sum(tally[kind]["usd"] for kind in KINDS), tally["usd_all_teacher"]
    return tally | {"student_share": tally["student"]["requests"] / served if served else None, "usd": spent,
                    "saved_usd": all_teacher - spent,
                    "saved_fraction": (all_teacher - spent) / all_teacher if all_teacher else None}


def savings_report(store: LogStore, prices: TurnConfig, model_prices: Mapping[str, Price] | None = None, *,
                   workload: str | None = None, since: float | None = None,
                   until: float | None = None) -> dict[str, Any]:
    """Per workload, per UTC day and in total: requests, tokens and dollars by teacher,
    student, shadow and evaluation answers, against the teacher answering all served
    traffic. `model_prices` (a model's input/output prices, `ServeConfig.price_list`) wins
    over the flat `turn.*_price_per_mtok`. Reads the store's bulk scan, a partition at a time."""
    model_prices = model_prices or {}
    window = LogFilter(workload_id=workload, since=since, until=until)
    cells: dict[tuple[str, str], dict[str, Any]] = defaultdict(_tally)  # (workload, UTC day)
    teachers: dict[str, Counter] = defaultdict(Counter)  # workload -> models that answered it without an adapter
    partitions = max(1, -(-store.count(window) // SCAN_ROWS))
    for partition in store.partitions(window, partitions):
        for _, timestamp, workload_id, _, _, status, raw in store.scan(partition):
            cell = cells[workload_id, datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d")]
            if status != "ok":
                cell["errors"] += 1
                continue
            record = json.loads(raw)
            base, adapter = record.get("base_model") or record.get("model"), record.get("adapter")
            tags = record.get("tags", {})
            kind = ("evaluation" if workload_id == EVAL_WORKLOAD
                    else "audit" if is_audit(tags) else "shadow" if "shadow_of" in tags
                    else "student" if adapter else "teacher")
            flat = prices.student_price_per_mtok if adapter else prices.teacher_price_per_mtok
            _add(cell, kind, record.get("usage"), model_prices.get(base, flat))
            if kind in ("teacher", "audit"):
                teachers[workload_id][base] += 1
    # what the teacher would have charged for the students' tokens: the workload's teacher is
    # the model that answered (or audited) most of it without an adapter, at its own prices when it has them
    teacher_of = {name: counts.most_common(1)[0][0] for name, counts in teachers.items()}
    for (workload_id, _), cell in cells.items():
        price = model_prices.get(teacher_of.get(workload_id), prices.teacher_price_per_mtok)
        student = cell["student"]
        cell["usd_all_teacher"] = cell["teacher"]["usd"] + _cost(student["prompt_tokens"], student["completion_tokens"],
                                                                  student["tokens"], price)
    workloads = {name: _tally() for name, _ in cells}
    days = {day: _tally() for _, day in cells}
    total = _tally()
    for (name, day), cell in cells.items():
        for tally in (workloads[name], days[day], total):
            _merge(tally, cell)
    return {"workload": workload, "since": since, "until": until,
            "prices_per_mtok": {"teacher": prices.teacher_price_per_mtok, "student": prices.student_price_per_mtok,
                                "models": {name: price.model_dump() for name, price in sorted(model_prices.items())}},
            "teacher_models": dict(sorted(teacher_of.items())), "total": _summed(total),
            "workloads": {name: _summed(workloads[name]) for name in sorted(workloads)},
            "days": {day: _summed(days[day]) for day in sorted(days)}}
