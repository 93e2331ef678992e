"""`curate_workload`: a workload's logged inferences -> a versioned training dataset.

The per-record work (parse, teacher filter, feedback, validation, PII redaction, label,
dedup key) runs on Ray Data over `read_logs`, in parallel across the cluster; the
decisions that need every record at once (dedup, near-dedup, the stratified split, the
shared prefix, ICL picks) run on the driver over those results, which are small next to
the logs. Status and time window are pushed down into the store's filter.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pyarrow
import pyarrow.compute

import flywheel
from flywheel.adapters import list_adapters
from flywheel.config import FlywheelConfig
from flywheel.datasets import DatasetVersion, trained_rows, write_dataset
from flywheel.examples import OUTPUT, REASONS, ExampleRules, prepare_batch
from flywheel.icl import nearest_examples, uniform_examples
from flywheel.splits import near_duplicates, newest_per_key, stratified_split
from flywheel.store import LogFilter, LogStore

CURATION_VERSION = 2  # bump when the same inputs would curate differently
PRUNE_MIN_SHARE = 0.5  # a prefix is "the workload's" when at least half the examples share it
Progress = Callable[[str], None]


class CurationError(ValueError):
    """No dataset can be made; the message says why in one line."""


def _public_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if "@" in rest else url


def prepare_on_ray(store: LogStore, filter: LogFilter, rules: ExampleRules) -> pyarrow.Table:
    """The per-record half on Ray Data: `read_logs` partitions -> `prepare_batch` on workers."""
    import ray

    from flywheel.log_dataset import read_logs

    dataset = read_logs(store, filter).map_batches(prepare_batch, fn_kwargs={"rules": rules},
                                                   batch_format="pyarrow", batch_size=1_000)
    tables = ray.get(dataset.to_arrow_refs())
    return pyarrow.concat_tables(tables) if tables else OUTPUT.empty_table()


def prepare_in_process(store: LogStore, filter: LogFilter, rules: ExampleRules) -> pyarrow.Table:
    """The same half in this one process, without Ray (the baseline bench/curate_scale.py
    compares against, and a way to curate where no Ray is running)."""
    from flywheel.store import SCAN_FIELDS

    rows = [row for partition in store.partitions(filter, 1) for row in store.scan(partition)]
    tables = [prepare_batch(pyarrow.table(dict(zip(SCAN_FIELDS, zip(*rows[start:start + 10_000], strict=True),
                                                   strict=True))), rules)
              for start in range(0, len(rows), 10_000)]
    return pyarrow.concat_tables(tables) if tables else OUTPUT.empty_table()


def _take(table: pyarrow.Table, indices: list[int]) -> pyarrow.Table:
    return table.take(pyarrow.array(indices, type=pyarrow.int64()))  # typed: an empty list must work too


def _examples(table: pyarrow.Table, tools: dict[str, str], pruned_prefix: str | None,
              prune_all: bool = False) -> list[dict[str, Any]]:
    """Dataset rows with `messages` and `tools` as JSON text (`tools`: hash -> schemas);
    rows whose prefix is `pruned_prefix` (every row with `prune_all`) lose their system
    message and tools."""
    examples = []
    for row in table.select(["id", "label", "source", "system", "turns", "tools_hash", "prefix"]).to_pylist():
        pruned = prune_all or (pruned_prefix is not None and row["prefix"] == pruned_prefix)
        # `turns` always holds at least the answer, so splicing the system message in is safe
        messages = row["turns"] if pruned or not row["system"] else f"[{row['system']},{row['turns'][1:]}"
        examples.append({"id": row["id"], "label": row["label"], "source": row["source"], "messages": messages,
                         "tools": "[]" if pruned or not row["tools_hash"] else tools[row["tools_hash"]]})
    return examples


def curate_workload(config: FlywheelConfig, store: LogStore, workload_id: str, since: float | None = None,
                    until: float | None = None, progress: Progress = lambda _: None,
                    prepare: Callable[[LogStore, LogFilter, ExampleRules], pyarrow.Table] = prepare_on_ray,
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
    prepared = prepare(store, ok, rules)
    dropped = Counter(prepared["reason"].to_pylist())
    remaining = counts["ok"]
    for reason in REASONS:
        remaining -= dropped[reason]
        counts[f"after_{reason}"] = remaining
    table = prepared.filter(pyarrow.compute.equal(prepared["reason"], ""))
    tools = {digest: text for digest, text in zip(table["tools_hash"].to_pylist(), table["tools"].to_pylist(),
                                                  strict=True) if text}
    table = table.drop_columns(["tools"])
    pii = Counter()
    for found in table["pii"].to_pylist():
        if found:
            pii.update(json.loads(found))

    progress("deduplicating")
    ids, timestamps = table["id"].to_pylist(), table["timestamp"].to_pylist()
    table = _take(table, newest_per_key(table["key"].to_pylist(), timestamps, ids))
    counts["after_dedup"] = table.num_rows
    if settings.near_duplicate_threshold is not None:
        table = _take(table, near_duplicates(table["text"].to_pylist(), table["timestamp"].to_pylist(),
                                           table["id"].to_pylist(), settings.near_duplicate_threshold))
        counts["after_near_dedup"] = table.num_rows
    if table.num_rows < settings.min_records:
        steps = ", ".join(f"{name} {value}" for name, value in counts.items())
        raise CurationError(f"workload {workload_id!r} has {table.num_rows} usable record(s) after curation; "
                            f"at least {settings.min_records} are needed (curate.min_records). Steps: {steps}")

    progress("splitting")
    ids, labels = table["id"].to_pylist(), table["label"].to_pylist()
    learned, learned_from = trained_rows(config.datasets_dir, workload_id,
                                         {adapter.dataset_id for adapter in list_adapters(config.adapters_dir)})
    split = stratified_split(ids, labels, settings.eval_size, settings.val_ratio, settings.seed, trained=learned)
    tool_calling = pyarrow.compute.sum(pyarrow.compute.not_equal(table["tools_hash"], "")).as_py() \
        >= table.num_rows / 2
    prefix_counts = Counter(prefix for prefix in table["prefix"].to_pylist() if prefix)
    top_prefix, top_count = prefix_counts.most_common(1)[0] if prefix_counts else ("", 0)
    prune = settings.prefix_pruning if settings.prefix_pruning is not None else tool_calling
    prefix = None
    if prune and top_count >= PRUNE_MIN_SHARE * table.num_rows:
        holder = table.filter(pyarrow.compute.equal(table["prefix"], top_prefix)).slice(0, 1).to_pylist()[0]
        prefix = {"hash": top_prefix, "system": json.loads(holder["system"])["content"] if holder["system"] else "",
                  "tools": json.loads(tools[holder["tools_hash"]]) if holder["tools_hash"] else [],
                  "share": top_count / table.num_rows}
    pruned_prefix = prefix["hash"] if prefix else None
    train, val, evals = _take(table, split.train), _take(table, split.val), _take(table, split.eval)
    splits = {"train": _examples(train, tools, pruned_prefix), "val": _examples(val, tools, pruned_prefix),
              "eval": _examples(evals, tools, None)}

    progress("choosing in-context examples")
    train_tokens = train["turn_tokens"].to_pylist()
    uniform = uniform_examples(train["label"].to_pylist(), train_tokens, settings.icl.per_label,
                               settings.icl.token_budget, settings.seed)
    # shown as turns inside another prompt: no system prompt, no tools
    splits["icl"] = _examples(_take(train, uniform), tools, None, prune_all=True)
    for example in splits["eval"]:
        example["icl_ids"] = []
    if settings.icl.semantic and splits["eval"] and train.num_rows:
        pool = sorted(random.Random(settings.seed).sample(range(train.num_rows),
                                                          min(settings.icl.pool_size, train.num_rows)))
        train_texts, train_ids = train["text"].to_pylist(), train["id"].to_pylist()
        nearest = nearest_examples(evals["text"].to_pylist(), [train_texts[i] for i in pool],
                                   [train_tokens[i] for i in pool], settings.icl.neighbors, settings.icl.token_budget)
        for example, picks in zip(splits["eval"], nearest, strict=True):
            example["icl_ids"] = [train_ids[pool[i]] for i in picks]

    counts.update({split_name: len(items) for split_name, items in splits.items()})
    manifest = {
        "source": {"store": _public_url(store.url), "filter": {"workload_id": workload_id, "status": "ok",
                                                               "since": since, "until": until}},
        "workload_type": "tool_calling" if tool_calling else "generic",
        "labels": {name: dict(sorted(Counter(e["label"] for e in items).items())) for name, items in splits.items()},
        "sources": dict(sorted(Counter(e["source"] for e in splits["train"]).items())),
        "pii": dict(sorted(pii.items())),
        "prefix": prefix,
        "kept_out_of_eval": {"trained_on_by": learned_from, "rows": len(learned.intersection(ids))},
        "seed": settings.seed,
        "settings": settings.model_dump(mode="json"),
        "code_version": f"flywheel {flywheel.__version__}, curation v{CURATION_VERSION}",
        "created_at": time.time(),
    }
    progress("writing")
    return write_dataset(config.datasets_dir, workload_id, splits, manifest, counts, split.messages)
