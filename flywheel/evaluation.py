"""`evaluate`: candidates answer a dataset's eval split through the running service; the
`Judge` actor scores every answer against the reference; each metric gets a 95% bootstrap
interval, each candidate a paired difference against the incumbent and a per-label view.

Candidates: `base` (the student as is, with the full prompt and tools), `icl` (the same,
with the eval record's nearest train examples, or the uniform set, as earlier turns), an
adapter id (sent full requests as `<base>:<adapter>`; when its dataset pruned the shared
prefix, the service strips it, exactly as for live traffic — flywheel/prefix.py), and
`teacher`, the reference itself (the ceiling, scored like the rest).
Reports land in `<reports_dir>/<run id>/`: report.json, report.md, chart.png.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from flywheel.adapters import load_adapter
from flywheel.config import FlywheelConfig
from flywheel.datasets import DatasetVersion
from flywheel.judge import Judge
from flywheel.metrics import PRIMARY
from flywheel.stats import interval, paired_difference

TOOL_METRICS = ("function_name", "function_name_and_args", "valid_call")
EVAL_WORKLOAD = "flywheel-eval"  # evaluation traffic is logged under it: the flywheel's own, not users'
TEXT_METRICS = ("exact_match", "token_f1", "rouge_l", "embedding_cosine", "llm_rating", "pairwise_win")
Progress = Callable[[str], None]


class EvalReport(BaseModel):
    run_id: str
    dataset_id: str
    workload_type: str
    primary_metric: str
    incumbent: str
    candidates: dict[str, dict[str, dict[str, float]]]  # name -> metric -> mean, low, high, n
    differences: dict[str, dict[str, float]]  # name -> paired difference vs incumbent on the primary metric
    per_label: dict[str, dict[str, float]]  # name -> label -> primary metric mean
    scores: dict[str, dict[str, list[float | None]]]  # name -> metric -> per item (item order of `item_ids`)
    item_ids: list[str]
    latency_ms: dict[str, float]  # name -> mean per answer
    failures: dict[str, dict[str, Any]]  # name -> requests that got no answer: count, first error
    path: Path
    chart: Path

    def summary(self) -> dict[str, Any]:
        """What `flywheel evaluate --json` prints: everything but the per-item scores."""
        return self.model_dump(mode="json", exclude={"scores", "item_ids"})


def _icl_turns(row: dict[str, Any], train: dict[str, dict[str, Any]], uniform: list[dict[str, Any]]) -> list[dict]:
    """The examples as earlier turns; tool calls get the ids the OpenAI API requires."""
    examples = [train[i] for i in row.get("icl_ids") or [] if i in train] or uniform
    turns = []
    for example in examples:
        for message in example["messages"]:
            if message["role"] == "system":
                continue
            if message.get("tool_calls"):
                message = {**message, "tool_calls": [{**call, "id": call.get("id") or f"call_{len(turns)}_{k}"}
                                                     for k, call in enumerate(message["tool_calls"])]}
            turns.append(message)
    return turns


def _request(row: dict[str, Any], candidate: str, base: str, icl: list[dict], max_tokens: int) -> dict[str, Any]:
    """The eval record's request as a client sends it: full prompt and tools (an adapter
    that learned without the shared prefix gets it stripped by the service)."""
    messages, tools = row["messages"][:-1], row["tools"]
    model = base
    if candidate == "icl":
        system = messages[:1] if messages and messages[0]["role"] == "system" else []
        messages = system + icl + messages[len(system):]
    elif candidate not in ("base", "teacher"):
        model = f"{base}:{candidate}"
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    if tools:
        body["tools"] = tools
    return body


def _answer(client: Any, body: dict[str, Any]) -> tuple[dict[str, Any] | None, float, str | None]:
    """(message, latency ms, error): a candidate that cannot answer scores as wrong; it does
    not stop the evaluation."""
    started = time.monotonic()
    try:
        response = client.post("/v1/chat/completions", json=body, headers={"X-Workload-Id": EVAL_WORKLOAD})
        if response.status_code != 200:
            return None, (time.monotonic() - started) * 1000, f"HTTP {response.status_code}: {response.text[:300]}"
        return response.json()["choices"][0]["message"], (time.monotonic() - started) * 1000, None
    except Exception as error:
        return None, (time.monotonic() - started) * 1000, f"{type(error).__name__}: {error}"


def evaluate(config: FlywheelConfig, dataset: DatasetVersion, candidates: list[str], limit: int | None = None,
             progress: Progress = lambda _: None, judge: Any = None) -> EvalReport:
    """Score `candidates` on `dataset`'s eval split (first `limit` rows). `judge` is a `Judge`
    or a Ray actor handle to one (default: a new actor)."""
    import httpx
    import ray

    settings = config.evaluate
    rows = dataset.rows("eval")[:limit] if limit else dataset.rows("eval")
    if not rows:
        raise ValueError(f"dataset {dataset.dataset_id} has no eval rows")
    manifest = dataset.manifest()
    base = config.default_base
    train = {row["id"]: row for row in dataset.rows("train")} if "icl" in candidates else {}
    uniform = dataset.rows("icl")
    references = [row["messages"][-1] for row in rows]
    answers: dict[str, list[dict[str, Any] | None]] = {}
    latency: dict[str, float] = {}
    failures: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=config.service_url, timeout=600) as client:
        for name in candidates:
            if name == "teacher":
                answers[name] = references  # the ceiling: no request, no latency
                continue
            # an adapter answers on its own base model (and a missing one stops here, not 200 requests later)
            on = load_adapter(config.adapters_dir, name).base_model if name not in ("base", "icl") else base
            progress(f"{name}: answering {len(rows)} requests")
            bodies = [_request(row, name, on, _icl_turns(row, train, uniform) if name == "icl" else [],
                               settings.max_tokens) for row in rows]
            with ThreadPoolExecutor(settings.concurrency) as pool:
                results = list(pool.map(lambda body: _answer(client, body), bodies))
            answers[name] = [message for message, _, _ in results]
            latency[name] = sum(ms for _, ms, _ in results) / len(results)
            errors = [error for _, _, error in results if error]
            if errors:
                failures[name] = {"count": len(errors), "first": errors[0]}

    progress("judging")
    if judge is None:
        llm = settings.judge.model_dump() if settings.judge.base_url else None
        judge = ray.remote(Judge).remote(llm, settings.seed)
    items_by_candidate = {name: [{"id": row["id"], "label": row["label"], "request": {"messages": row["messages"][:-1]},
                                  "reference": reference, "answer": answer}
                                 for row, reference, answer in zip(rows, references, answers[name], strict=True)]
                          for name in candidates}
    score = judge.score.remote if hasattr(judge.score, "remote") else None
    scored = {name: (ray.get(score(items)) if score else judge.score(items)) for name, items in items_by_candidate.items()}
    return _report(config, dataset, manifest, rows, candidates, scored, latency, failures)


def _report(config: FlywheelConfig, dataset: DatasetVersion, manifest: dict, rows: list[dict], candidates: list[str],
            scored: dict[str, list[dict]], latency: dict[str, float],
            failures: dict[str, dict[str, Any]]) -> EvalReport:
    settings = config.evaluate
    workload_type = manifest.get("workload_type", "generic")
    primary = PRIMARY[workload_type]
    metrics = [m for m in (*TOOL_METRICS, *TEXT_METRICS) if any(m in s for scores in scored.values() for s in scores)]
    scores = {name: {metric: [item.get(metric) for item in items] for metric in metrics}
              for name, items in scored.items()}
    summary = {name: {metric: interval([v for v in values if v is not None], settings.seed, settings.bootstrap_samples)
                      for metric, values in by_metric.items() if any(v is not None for v in values)}
               for name, by_metric in scores.items()}
    incumbent = settings.incumbent if settings.incumbent in candidates else candidates[0]
    differences = {name: paired_difference(scores[name][primary], scores[incumbent][primary], settings.seed,
                                           settings.bootstrap_samples)
                   for name in candidates if name != incumbent}
    per_label: dict[str, dict[str, float]] = {}
    for name in candidates:
        by_label: dict[str, list[float]] = defaultdict(list)
        for row, value in zip(rows, scores[name][primary], strict=True):
            by_label[row["label"]].append(value)
        per_label[name] = {label: sum(values) / len(values) for label, values in sorted(by_label.items())}
    digest = hashlib.sha256(json.dumps([dataset.content_hash, candidates]).encode()).hexdigest()[:6]
    run_id = f"eval-{time.strftime('%Y%m%d-%H%M%S')}-{digest}"
    folder = config.reports_dir / run_id
    folder.mkdir(parents=True, exist_ok=True)
    report = EvalReport(run_id=run_id, dataset_id=dataset.dataset_id, workload_type=workload_type,
                        primary_metric=primary, incumbent=incumbent, candidates=summary, differences=differences,
                        per_label=per_label, scores=scores, item_ids=[row["id"] for row in rows], latency_ms=latency,
                        failures=failures, path=folder, chart=folder / "chart.png")
    (folder / "report.json").write_text(report.model_dump_json(indent=2) + "\n")
    (folder / "report.md").write_text(markdown(report))
    _chart(report)
    return report


def markdown(report: EvalReport) -> str:
    metrics = list(next(iter(report.candidates.values())))
    lines = [f"# Evaluation {report.run_id}", "",
             (f"Dataset `{report.dataset_id}` ({report.workload_type}); primary metric `{report.primary_metric}`; "
             f"95% bootstrap intervals."), "", "| candidate | " + " | ".join(metrics) + " | latency ms |",
             "|---" * (len(metrics) + 2) + "|"]
    for name, by_metric in report.candidates.items():
        cells = [f"{by_metric[m]['mean']:.3f} [{by_metric[m]['low']:.3f}, {by_metric[m]['high']:.3f}]"
                 if m in by_metric else "" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {report.latency_ms.get(name, float('nan')):.0f} |")
    lines += ["", f"Paired difference vs `{report.incumbent}` on `{report.primary_metric}`:", ""]
    lines += [f"- {name}: {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" for name, d in report.differences.items()]
    labels = sorted({label for by_label in report.per_label.values() for label in by_label})
    lines += ["", f"Per label (`{report.primary_metric}`):", "", "| label | " + " | ".join(report.per_label) + " |",
              "|---" * (len(report.per_label) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(f"{report.per_label[name].get(label, float('nan')):.2f}"
                                           for name in report.per_label) + " |" for label in labels]
    lines += [f"- {name}: {failure['count']} request(s) got no answer, e.g. {failure['first']}"
              for name, failure in report.failures.items()]
    lines += ["", f"Chart: {report.chart}", ""]
    return "\n".join(lines)


def _chart(report: EvalReport) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    metrics = [m for m in TOOL_METRICS + ("token_f1", "embedding_cosine")
               if any(m in by_metric for by_metric in report.candidates.values())]
    figure, axis = pyplot.subplots(figsize=(1.8 + 1.6 * len(metrics), 4.2))
    width = 0.8 / len(report.candidates)
    for i, (name, by_metric) in enumerate(report.candidates.items()):
        xs = [j + i * width for j, m in enumerate(metrics) if m in by_metric]
        means = [by_metric[m]["mean"] for m in metrics if m in by_metric]
        errors = [[by_metric[m]["mean"] - by_metric[m]["low"] for m in metrics if m in by_metric],
                  [by_metric[m]["high"] - by_metric[m]["mean"] for m in metrics if m in by_metric]]
        axis.bar(xs, means, width, yerr=errors, capsize=3, label=name)
    axis.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], metrics, rotation=15)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("score (95% bootstrap interval)")
    axis.set_title(f"{report.dataset_id}: candidates vs teacher")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(report.chart, dpi=120)
    pyplot.close(figure)


def load_report(reports_dir: Path, run_id: str) -> EvalReport:
    path = Path(reports_dir) / run_id / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no report {run_id!r} under {reports_dir}")
    return EvalReport.model_validate_json(path.read_text())
