"""`curate_workload`: a workload's logged inferences -> a versioned training dataset.

The per-record work (parse, teacher filter, feedback, validation, PII redaction, label,
dedup key) runs on Ray Data over `read_logs`, in parallel across the cluster; the
decisions that need every record at once (dedup, near-dedup, the stratified split, the
shared prefix, ICL picks) run on the driver over those results, which are small next to
the logs. Status and time window are pushed down into the store's filter.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import flywheel
from flywheel.config import FlywheelConfig
from flywheel.datasets import DatasetVersion, write_dataset
from flywheel.examples import REASONS, ExampleRules, estimate_tokens, prepare_batch
from flywheel.icl import nearest_examples, uniform_examples
from flywheel.splits import near_duplicates, newest_per_key, stratified_split
from flywheel.store import LogFilter, LogStore

CURATION_VERSION = 1  # bump when the same inputs would curate differently
PRUNE_MIN_SHARE = 0.5  # a prefix is "the workload's" when at least half the examples share it
Progress = Callable[[str], None]


class CurationError(ValueError):
    """No dataset can be made; the message says why in one line."""


def _public_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if "@" in rest else url


def prepare_on_ray(store: LogStore, filter: LogFilter, rules: ExampleRules) -> list[dict[str, Any]]:
    """The per-record half on Ray Data: `read_logs` partitions -> `prepare_batch` on workers."""
    import pyarrow
    import ray

    from flywheel.log_dataset import read_logs

    dataset = read_logs(store, filter).map_batches(prepare_batch, fn_kwargs={"rules": rules},
                                                   batch_format="pyarrow", batch_size=1_000)
    tables = ray.get(dataset.to_arrow_refs())
    return pyarrow.concat_tables(tables).to_pylist() if tables else []


def prepare_in_process(store: LogStore, filter: LogFilter, rules: ExampleRules) -> list[dict[str, Any]]:
    """The same half in this one process, without Ray (the baseline bench/curate_scale.py
    compares against, and a way to curate where no Ray is running)."""
    import pyarrow

    from flywheel.store import SCAN_FIELDS

    rows = [row for partition in store.partitions(filter, 1) for row in store.scan(partition)]
    prepared = []
    for start in range(0, len(rows), 10_000):
        columns = list(zip(*rows[start:start + 10_000], strict=True))
        batch = pyarrow.table(dict(zip(SCAN_FIELDS, columns, strict=True)))
        prepared += prepare_batch(batch, rules).to_pylist()
    return prepared


def _example(row: dict[str, Any], pruned: bool) -> dict[str, Any]:
    messages, tools = json.loads(row["messages"]), json.loads(row["tools"]) if row["tools"] else []
    if pruned:
        messages = [message for message in messages if message["role"] != "system"]
        tools = []
    return {"id": row["id"], "label": row["label"], "source": row["source"], "messages": messages, "tools": tools}


def curate_workload(config: FlywheelConfig, store: LogStore, workload_id: str, since: float | None = None,
                    until: float | None = None, progress: Progress = lambda _: None,
                    prepare: Callable[[LogStore, LogFilter, ExampleRules], list[dict[str, Any]]] = prepare_on_ray,
                    ) -> DatasetVersion:
    """Curate `workload_id`'s records (optionally only those in [since, until)) per
    `config.curate` into a dataset under `config.datasets_dir`; `CurationError` when
    there is nothing usable. `prepare` runs the per-record half (Ray Data by default)."""
    settings = config.curate
    if since is None and settings.window_days is not None:
        since = time.time() - settings.window_days * 86_400
    window = LogFilter(workload_id=workload_id, since=since, until=until)
    counts = {"logged": store.count(window)}
    if counts["logged"] == 0:
        raise CurationError(f"no records for workload {workload_id!r} in {_public_url(store.url)}")
    ok = replace(window, status="ok")
    counts["ok"] = store.count(ok)

    progress(f"preparing {counts['ok']:,} records")
    rules = ExampleRules(teacher_models=tuple(settings.teacher_models), min_tokens=settings.min_tokens,
                         max_tokens=settings.max_tokens, min_score=settings.min_score,
                         redact=settings.pii.enabled, custom_patterns=dict(settings.pii.custom_patterns))
    rows = prepare(store, ok, rules)
    dropped = Counter(row["reason"] for row in rows if row["reason"])
    remaining = counts["ok"]
    for reason in REASONS:
        remaining -= dropped[reason]
        counts[f"after_{reason}"] = remaining
    rows = [row for row in rows if not row["reason"]]
    pii = Counter()
    for row in rows:
        pii.update(json.loads(row["pii"]) if row["pii"] else {})

    progress("deduplicating")
    rows = [rows[i] for i in newest_per_key([r["key"] for r in rows], [r["timestamp"] for r in rows],
                                            [r["id"] for r in rows])]
    counts["after_dedup"] = len(rows)
    if settings.near_duplicate_threshold is not None:
        rows = [rows[i] for i in near_duplicates([r["text"] for r in rows], [r["timestamp"] for r in rows],
                                                 [r["id"] for r in rows], settings.near_duplicate_threshold)]
        counts["after_near_dedup"] = len(rows)
    if len(rows) < settings.min_records:
        steps = ", ".join(f"{name} {value}" for name, value in counts.items())
        raise CurationError(f"workload {workload_id!r} has {len(rows)} usable record(s) after curation; "
                            f"at least {settings.min_records} are needed (curate.min_records). Steps: {steps}")

    progress("splitting")
    split = stratified_split([r["id"] for r in rows], [r["label"] for r in rows], settings.eval_size,
                             settings.val_ratio, settings.seed)
    tool_calling = sum(1 for r in rows if r["tools"]) >= len(rows) / 2
    prefix_counts = Counter(r["prefix"] for r in rows if r["prefix"])
    top_prefix, top_count = prefix_counts.most_common(1)[0] if prefix_counts else ("", 0)
    prune = settings.prefix_pruning if settings.prefix_pruning is not None else tool_calling
    prune = prune and top_count >= PRUNE_MIN_SHARE * len(rows)
    prefix = None
    if prune:
        holder = _example(next(r for r in rows if r["prefix"] == top_prefix), pruned=False)
        system = holder["messages"][0]["content"] if holder["messages"][0]["role"] == "system" else ""
        prefix = {"hash": top_prefix, "system": system, "tools": holder["tools"], "share": top_count / len(rows)}

    def examples(indices: list[int], prunable: bool) -> list[dict[str, Any]]:
        return [_example(rows[i], prunable and prune and rows[i]["prefix"] == top_prefix) for i in indices]

    splits = {"train": examples(split.train, True), "val": examples(split.val, True),
              "eval": examples(split.eval, False)}
    progress("choosing in-context examples")
    train_rows = [rows[i] for i in split.train]
    turn_tokens = [_turn_tokens(row) for row in train_rows]
    uniform = uniform_examples([r["label"] for r in train_rows], turn_tokens, settings.icl.per_label,
                               settings.icl.token_budget, settings.seed)
    splits["icl"] = [_example(train_rows[i], pruned=True) for i in uniform]
    for example in splits["eval"]:
        example["icl_ids"] = []
    if settings.icl.semantic and splits["eval"] and train_rows:
        import random

        pool = sorted(random.Random(settings.seed).sample(range(len(train_rows)),
                                                          min(settings.icl.pool_size, len(train_rows))))
        nearest = nearest_examples([rows[i]["text"] for i in split.eval], [train_rows[i]["text"] for i in pool],
                                   [turn_tokens[i] for i in pool], settings.icl.neighbors, settings.icl.token_budget)
        for example, picks in zip(splits["eval"], nearest, strict=True):
            example["icl_ids"] = [train_rows[pool[i]]["id"] for i in picks]

    counts.update({split_name: len(items) for split_name, items in splits.items()})
    manifest = {
        "source": {"store": _public_url(store.url), "filter": {"workload_id": workload_id, "status": "ok",
                                                               "since": since, "until": until}},
        "workload_type": "tool_calling" if tool_calling else "generic",
        "labels": {name: dict(sorted(Counter(e["label"] for e in items).items())) for name, items in splits.items()},
        "sources": dict(sorted(Counter(e["source"] for e in splits["train"]).items())),
        "pii": dict(sorted(pii.items())),
        "prefix": prefix,
        "seed": settings.seed,
        "settings": settings.model_dump(mode="json"),
        "code_version": f"flywheel {flywheel.__version__}, curation v{CURATION_VERSION}",
        "created_at": time.time(),
    }
    progress("writing")
    return write_dataset(config.datasets_dir, workload_id, splits, manifest, counts, split.messages)


def _turn_tokens(row: dict[str, Any]) -> int:
    """Tokens an example costs as an in-context turn: its conversation without system prompt."""
    messages = [m for m in json.loads(row["messages"]) if m["role"] != "system"]
    return estimate_tokens(json.dumps(messages))
