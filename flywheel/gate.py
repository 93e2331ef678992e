"""The promotion gate: does a candidate adapter take over an alias's traffic?

It reads an evaluation report (flywheel/evaluation.py) and passes a candidate only when
(1) its score reaches `min_teacher_ratio` of the teacher's on the gate metric, (2) the
lower bound of the paired 95% interval (candidate - incumbent student, same items) is at
least `-max_regression`, and (3) at least `min_eval_size` items were scored. Every
decision is written to `<decisions_dir>/<alias>/`, promoted or not, with its reasons;
`gate_and_promote` moves the alias only on a pass.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from flywheel.config import FlywheelConfig
from flywheel.evaluation import EvalReport
from flywheel.routes import RouteBook
from flywheel.stats import paired_difference


class Decision(BaseModel):
    alias: str
    candidate: str
    incumbent: str | None = Field(description="The alias's student when the gate ran (adapter id), if any.")
    promote: bool
    reasons: list[str] = Field(description="One line per check, passed or failed, in order.")
    metric: str
    candidate_score: float | None
    teacher_score: float | None
    teacher_ratio: float | None
    versus_incumbent: dict[str, float] | None = Field(description="Paired difference: mean, low, high, n.")
    eval_size: int
    report_id: str
    decided_at: float = Field(default_factory=time.time)
    path: Path | None = None


def decide(config: FlywheelConfig, report: EvalReport, candidate: str, alias: str,
           incumbent: str | None) -> Decision:
    """The gate's verdict on `candidate` (an adapter id in `report`); nothing is changed."""
    policy = config.gate
    metric = policy.metric or report.primary_metric
    passed: list[bool] = []
    reasons: list[str] = []

    def check(ok: bool, reason: str) -> None:
        passed.append(ok)
        reasons.append(("pass: " if ok else "fail: ") + reason)

    values = report.scores.get(candidate, {}).get(metric)
    if values is None:
        check(False, f"{candidate} has no `{metric}` scores in report {report.run_id}")
        return Decision(alias=alias, candidate=candidate, incumbent=incumbent, promote=False, reasons=reasons,
                        metric=metric, candidate_score=None, teacher_score=None, teacher_ratio=None,
                        versus_incumbent=None, eval_size=0, report_id=report.run_id)
    scored = [value for value in values if value is not None]
    check(len(scored) >= policy.min_eval_size,
          f"{len(scored)} items scored (the gate needs >= {policy.min_eval_size})")

    score = sum(scored) / len(scored) if scored else 0.0
    teacher_row = report.candidates.get("teacher", {}).get(metric)
    # the references are the teacher's own answers: unevaluated, the teacher scores 1.0 on them
    teacher = teacher_row["mean"] if teacher_row else 1.0
    ratio = score / teacher if teacher > 0 else None
    check(ratio is not None and ratio >= policy.min_teacher_ratio,
          f"{metric} {score:.3f} is {ratio:.1%} of the teacher's {teacher:.3f} (needs >= "
          f"{policy.min_teacher_ratio:.0%})" if ratio is not None else f"the teacher scores {teacher} on {metric}")

    versus = None
    if incumbent is None:
        check(True, "no incumbent student: nothing to regress from")
    elif incumbent == candidate:
        check(True, f"{candidate} is already the incumbent")
    elif incumbent not in report.scores or metric not in report.scores[incumbent]:
        check(False, f"the incumbent {incumbent} was not evaluated in report {report.run_id}")
    else:
        pairs = [(c, i) for c, i in zip(values, report.scores[incumbent][metric], strict=True)
                 if c is not None and i is not None]
        versus = paired_difference([c for c, _ in pairs], [i for _, i in pairs], config.evaluate.seed,
                                   config.evaluate.bootstrap_samples)
        check(versus["low"] >= -policy.max_regression,
              f"vs incumbent {incumbent}: {versus['mean']:+.3f} [{versus['low']:+.3f}, {versus['high']:+.3f}] "
              f"(lower bound must be >= -{policy.max_regression})")
    return Decision(alias=alias, candidate=candidate, incumbent=incumbent, promote=all(passed), reasons=reasons,
                    metric=metric, candidate_score=score, teacher_score=teacher, teacher_ratio=ratio,
                    versus_incumbent=versus, eval_size=len(scored), report_id=report.run_id)


def record_decision(config: FlywheelConfig, decision: Decision) -> Decision:
    folder = config.decisions_dir / decision.alias
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(decision.decided_at))
    for attempt in range(1000):  # several decisions in one second keep their order and all survive
        path = folder / f"{stamp}-{attempt:03d}-{decision.candidate}.json"
        decision = decision.model_copy(update={"path": path})
        try:
            with path.open("x") as handle:
                handle.write(decision.model_dump_json(indent=2) + "\n")
            return decision
        except FileExistsError:
            continue
    raise RuntimeError(f"more than 1000 decisions for {decision.alias} in one second")


def list_decisions(config: FlywheelConfig, alias: str) -> list[dict[str, Any]]:
    """An alias's decisions, oldest first."""
    folder = config.decisions_dir / alias
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def gate_and_promote(config: FlywheelConfig, book: RouteBook, report: EvalReport, candidate: str,
                     alias: str) -> Decision:
    """Decide against the alias's current student, record the decision, promote on a pass."""
    state = book.get(alias)
    incumbent = state.student.partition(":")[2] if state and state.student else None
    decision = record_decision(config, decide(config, report, candidate, alias, incumbent))
    if decision.promote:
        book.promote(alias, candidate, reason=f"gate passed: {decision.path.name} (report {report.run_id})")
    return decision
