"""The promotion gate: does a candidate adapter take over an alias's traffic?

Offline, it reads an evaluation report (flywheel/evaluation.py) and passes a candidate
only when (1) its score (with `require_confidence`, a 95% lower bound on it) reaches
`min_teacher_ratio` of the teacher's on the gate metric, (2) the lower bound of the paired
95% interval (candidate - incumbent student, same items) is at least `-max_regression`,
and (3) at least `min_eval_size` items were scored. `gate_and_promote` then moves the
alias: straight to the candidate (`gate.rollout: promote`), or into a trial on live
traffic: `shadow` (the teacher answers, the candidate answers the same requests in the
background) or `canary` (the candidate answers `canary_percent`% of the traffic, and the
teacher audits every answer it gives).

Online, `gate_shadow` judges a trial on its live pairs (flywheel/shadow.py): once
`shadow_min_pairs` requests were answered by both, the candidate is promoted when its
answers score `min_teacher_ratio` against the teacher's (or, with `require_confidence`,
once a bound valid at every look says so), and withdrawn otherwise. After promotion,
`gate_audit` keeps judging the student on the teacher's audits of its live answers
(`gate.audit_percent`) and demotes it once they clearly fall short. Every decision is
written to `<decisions_dir>/<alias>/` with its reasons, whatever it decided.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, Field

from flywheel import telemetry
from flywheel.config import MODEL_NAME, FlywheelConfig
from flywheel.evaluation import EvalReport
from flywheel.file_state import exclusive, replace_file
from flywheel.routes import AliasState, RouteBook, RouteError
from flywheel.stats import lower_bound, paired_difference, upper_bound
from flywheel.store import LogStore

# A student is judged on its newest audits: drift shows in them, and a tick stays cheap.
AUDIT_WINDOW = 200


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
    report_id: str = Field(description="The evaluation run, or `shadow:<since>` / `audit:<since>` for live "
                           "evidence (a trial's pairs / the teacher's audits).")
    outcome: str = Field("", description="What happened to the alias: promoted, shadow trial, canary "
                         "trial, withdrawn, unchanged, demoted (an audited student), refused (a trial passed "
                         "but the routing table refused the candidate: the last reason says why).")
    pending: bool = Field(False, description="Too little live evidence yet: nothing recorded or changed.")
    decided_at: float = Field(default_factory=time.time)
    path: Path | None = None


def decide(config: FlywheelConfig, report: EvalReport, candidate: str, alias: str,
           incumbent: str | None) -> Decision:
    """The gate's verdict on `candidate` (an adapter id in `report`); nothing is changed."""
    policy = config.gate.for_alias(alias)
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
    if ratio is None:
        check(False, f"the teacher scores {teacher} on {metric}")
    elif policy.require_confidence:  # one look at a fixed sample: the fixed-n bound
        floor = lower_bound(score, len(scored))
        check(floor / teacher >= policy.min_teacher_ratio,
              f"{metric} {score:.3f}, at least {floor:.3f} (95% lower bound), is at least {floor / teacher:.1%} of "
              f"the teacher's {teacher:.3f} (needs >= {policy.min_teacher_ratio:.0%})")
    else:
        check(ratio >= policy.min_teacher_ratio, f"{metric} {score:.3f} is {ratio:.1%} of the teacher's "
              f"{teacher:.3f} (needs >= {policy.min_teacher_ratio:.0%})")

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


def record_decision(config: FlywheelConfig, decision: Decision, count: bool = True) -> Decision:
    """Write the decision as `<stamp>-<n>-<candidate>.json`; the lock makes `n` count the
    alias's decisions within a second, so the names sort in the order they were made.
    `count`: add it to the metric now (else the caller does, once its outcome is final)."""
    folder = config.decisions_dir / decision.alias
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(decision.decided_at))
    with exclusive(folder / ".lock"):
        taken = len(list(folder.glob(f"{stamp}-*.json")))
        decision = decision.model_copy(update={"path": folder / f"{stamp}-{taken:03d}-{decision.candidate}.json"})
        _save(decision)
    if count:
        _count(decision)
    return decision


def _count(decision: Decision) -> None:
    telemetry.decided(decision.alias, decision.outcome or ("passed" if decision.promote else "failed"))


def _save(decision: Decision) -> None:
    """Write the decision to its own `path` (set by `record_decision`)."""
    replace_file(decision.path, decision.model_dump_json(indent=2) + "\n")


def list_decisions(config: FlywheelConfig, alias: str) -> list[dict[str, Any]]:
    """An alias's decisions, oldest first."""
    return recent_decisions(config.decisions_dir, alias)[::-1]


def recent_decisions(decisions_dir: Path, alias: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Recorded decisions of `alias` (None: every alias), newest first, at most `limit`."""
    if alias is not None and not MODEL_NAME.match(alias):
        raise ValueError(f"invalid alias {alias!r}")
    folders = [decisions_dir / alias] if alias else sorted(path for path in decisions_dir.glob("*") if path.is_dir())
    # names sort in the order an alias's decisions were made: read only each alias's newest `limit`
    paths = [path for folder in folders for path in sorted(folder.glob("*.json"))[-limit if limit else 0:]]
    found = [(json.loads(path.read_text()), path.name) for path in paths]
    found.sort(key=lambda item: (item[0].get("decided_at", 0), item[1]), reverse=True)
    return [decision for decision, _ in found[:limit]]


def gate_and_promote(config: FlywheelConfig, book: RouteBook, report: EvalReport, candidate: str,
                     alias: str) -> Decision:
    """Decide against the alias's current student, record the decision, and on a pass
    promote the candidate or start its trial on live traffic (`gate.rollout`: shadow or canary)."""
    state = book.get(alias)
    decision = decide(config, report, candidate, alias, state.student_adapter if state else None)
    policy = config.gate.for_alias(alias)
    rollout = policy.rollout
    outcome = ("promoted" if rollout == "promote" else f"{rollout} trial") if decision.promote else "unchanged"
    decision = record_decision(config, decision.model_copy(update={"outcome": outcome}))
    reason = f"gate passed: {decision.path.name} (report {report.run_id})"
    if decision.promote and rollout == "promote":
        book.promote(alias, candidate, reason=reason)
    elif decision.promote:
        book.set_mode(alias, rollout, candidate=candidate, reason=f"{reason}; on trial against live traffic",
                      percent=policy.canary_percent if rollout == "canary" else None)
    return decision


def decide_shadow(config: FlywheelConfig, evidence: dict[str, Any], metric: str, candidate: str, alias: str,
                  incumbent: str | None, since: float) -> Decision:
    """The verdict on a shadow trial from its `shadow_report` row (`evidence`; empty when
    no pairs yet): the teacher's answers are the references, so the candidate's score is
    its ratio to the teacher. `pending` while fewer than `shadow_min_pairs` pairs exist,
    unless the trial outlived `shadow_max_hours` (it fails for want of traffic) or, with
    `shadow_early_withdraw`, it cannot pass. With `require_confidence` it is also pending
    past `shadow_min_pairs` until it is sure either way. The watcher looks at every tick, so
    every bound here is one valid at every look (`anytime=True`)."""
    policy = config.gate.for_alias(alias)
    metric, ratio, sure = policy.metric or metric, policy.min_teacher_ratio, policy.require_confidence
    pairs, errors = evidence.get("n", 0), evidence.get("errors", 0)
    score = evidence.get("metrics", {}).get(metric, {}).get("mean")
    enough = pairs >= policy.shadow_min_pairs
    hours = (time.time() - since) / 3600
    expired = policy.shadow_max_hours is not None and hours >= policy.shadow_max_hours
    ceiling = upper_bound(score, pairs, anytime=True) if score is not None else None
    floor = lower_bound(score, pairs, anytime=True) if sure and score is not None else None
    # cannot pass: ends a trial before its pairs (early withdrawal) or, when sure is needed, after them
    hopeless = ceiling is not None and ceiling < ratio and (sure if enough else policy.shadow_early_withdraw)
    reasons = [("pass: " if enough else "fail: ") + f"{pairs} live pairs with the teacher, {errors} failed answers "
               f"(the gate needs >= {policy.shadow_min_pairs})"
               + (f" in the trial's {policy.shadow_max_hours:g} h limit" if expired and not enough else "")]
    good = score is not None and (floor if sure else score) >= ratio
    if score is None:
        reasons.append(f"fail: no `{metric}` scores in the shadow pairs")
    elif sure:
        reasons.append(("pass: " if good else "fail: ") + f"{metric} {score:.3f}, at least {floor:.3f} (a 95% "
                       f"lower bound that holds however often the trial is checked) against the teacher's live "
                       f"answers (needs >= {ratio:.0%})")
    else:
        spread = evidence["metrics"][metric]
        reasons.append(("pass: " if good else "fail: ") + f"{metric} {score:.3f} [{spread['low']:.3f}, "
                       f"{spread['high']:.3f}] against the teacher's live answers (needs >= {ratio:.0%})")
    if hopeless:
        reasons.append(f"fail: {'' if enough else 'withdrawn early: '}even {ceiling:.3f}, the 95% upper bound on "
                       f"{metric} that holds however often the trial is checked, is below {ratio:.0%}")
    quick = True
    if policy.shadow_max_latency_ratio is not None:
        latency = evidence.get("latency_ms", {})
        teacher, mine = latency.get("teacher"), latency.get("candidate")
        quick = teacher is not None and mine is not None and mine <= policy.shadow_max_latency_ratio * teacher
        reasons.append(("pass: " if quick else "fail: ") + (
            f"mean latency {mine:.0f} ms against the teacher's {teacher:.0f} ms on the same requests (needs <= "
            f"{policy.shadow_max_latency_ratio:g}x)" if teacher is not None and mine is not None
            else "no latencies to compare with the teacher's"))
    settled = enough and (not sure or good or hopeless)
    return Decision(alias=alias, candidate=candidate, incumbent=incumbent, promote=enough and good and quick,
                    reasons=reasons, metric=metric, candidate_score=score, teacher_score=1.0, teacher_ratio=score,
                    versus_incumbent=None, eval_size=pairs, report_id=f"shadow:{since:.0f}",
                    pending=not (settled or expired or hopeless))


def gate_shadow(config: FlywheelConfig, book: RouteBook, store: LogStore, alias: str,
                modes: tuple[str, ...] = ("shadow", "canary")) -> Decision | None:
    """Judge the alias's trial (in one of `modes`: shadow, or canary) on the live pairs
    since it began (None: no such trial). Once there is enough evidence the decision is
    recorded and acted on: a pass promotes the candidate, a fail withdraws it (the alias
    goes back to its student, or its teacher). A pending decision changes nothing."""
    from flywheel.shadow import shadow_report

    state = book.get(alias)
    if state is None or state.mode not in modes:
        return None
    # every workload (requests may name their own): the alias, candidate and start time pick the trial's pairs
    report = shadow_report(store, None, since=state.changed_at, candidate=state.candidate, alias=alias)
    decision = decide_shadow(config, report["candidates"].get(state.candidate, {}), report["primary_metric"],
                             state.candidate.partition(":")[2], alias, state.student_adapter, state.changed_at)
    telemetry.shadow_trial(alias, state.candidate, decision.eval_size, decision.candidate_score)
    if decision.pending:
        return decision
    decision = record_decision(config, decision.model_copy(update={
        "outcome": "promoted" if decision.promote else "withdrawn"}), count=False)
    reason = f"{state.mode} trial {'passed' if decision.promote else 'failed'}: {decision.path.name}"
    if decision.promote:
        try:
            book.promote(alias, state.candidate, reason=reason)
        except RouteError as refused:  # retired by an erasure (or deleted) while the trial was judged
            decision = decision.model_copy(update={
                "outcome": "refused", "reasons": [*decision.reasons, f"promotion refused: {refused}"]})
            _save(decision)
    else:
        book.set_mode(alias, "student" if state.student else "teacher", reason=reason)
    _count(decision)
    return decision


class AuditEvidence(NamedTuple):
    """What serves an alias under audit, and the live evidence it is judged on."""

    role: str  # student, or candidate (a canary's)
    model: str  # base:adapter
    audits: dict[str, Any]  # its `shadow_report` row on the newest `AUDIT_WINDOW` audited pairs
    metric: str  # the metric those are judged on
    attempts: int  # the newest `AUDIT_WINDOW` requests it answered itself...
    failed: int  # ...and how many of those failed (the teacher answered them)

    @property
    def pairs(self) -> int:
        return self.audits.get("n", 0)

    @property
    def score(self) -> float | None:
        """Its mean audited score on `metric` (None before any audit)."""
        return self.audits.get("metrics", {}).get(self.metric, {}).get("mean")


def decide_audit(config: FlywheelConfig, evidence: AuditEvidence, alias: str, since: float,
                 incumbent: str | None) -> Decision:
    """The verdict on an adapter serving an alias (its student, or a canary's candidate)
    since it began serving: it fails once even a 95% upper bound, valid at every look, is
    below `min_teacher_ratio` on either its audited score (the teacher's audits of its live
    answers) or the share of requests it answered itself without failing, each on at least
    `audit_min_pairs`; otherwise the decision is pending (nothing recorded or changed)."""
    policy = config.gate.for_alias(alias)
    metric, ratio, role = evidence.metric, policy.min_teacher_ratio, evidence.role  # the metric honours `policy`

    def bounded(mean: float, n: int) -> tuple[float, bool, str, str]:
        """The anytime 95% upper bound on `mean` over `n`; whether it fails (below `ratio`, on
        enough evidence); the reason's opening; its verb."""
        ceiling = upper_bound(mean, n, anytime=True)
        below = ceiling < ratio
        fails = below and n >= policy.audit_min_pairs
        return ceiling, fails, "fail: " if fails else "pending: " if below else "pass: ", \
            "is below" if below else "reaches"

    pairs, score = evidence.pairs, evidence.score
    reasons = [f"info: {pairs} of the {role}'s live answers audited by the teacher since it began serving"
               + ("" if pairs >= policy.audit_min_pairs else f"; a verdict needs >= {policy.audit_min_pairs}")]
    drifted = broken = False
    if score is not None:
        ceiling, drifted, opening, verb = bounded(score, pairs)
        reasons.append(opening + f"{metric} {score:.3f} against the teacher's answers to the same requests; "
                       f"{ceiling:.3f}, the 95% upper bound that holds however often it is checked, {verb} {ratio:.0%}")
    attempts, failed = evidence.attempts, evidence.failed
    if failed:
        answered = (attempts - failed) / attempts
        reliable, broken, opening, verb = bounded(answered, attempts)
        reasons.append(opening + f"{failed} of its newest {attempts} requests failed and went to the teacher; it "
                       f"answered {answered:.1%} itself, and {reliable:.3f}, the 95% upper bound, {verb} {ratio:.0%}")
    return Decision(alias=alias, candidate=evidence.model.partition(":")[2], incumbent=incumbent, promote=False,
                    reasons=reasons, metric=metric, candidate_score=score, teacher_score=1.0, teacher_ratio=score,
                    versus_incumbent=None, eval_size=pairs, report_id=f"audit:{since:.0f}",
                    pending=not (drifted or broken))


def audit_evidence(config: FlywheelConfig, store: LogStore, alias: str,
                   state: AliasState | None) -> AuditEvidence | None:
    """What serves the alias under audit and its evidence since it began serving. None
    when the teacher answers everything."""
    from flywheel.shadow import serving_attempts, shadow_report

    if state is None or state.mode not in ("student", "canary"):  # each mode has what it needs (AliasState)
        return None
    role, model = ("student", state.student) if state.mode == "student" else ("candidate", state.candidate)
    report = shadow_report(store, None, since=state.changed_at, candidate=model, alias=alias, limit=AUDIT_WINDOW)
    attempts, failed = serving_attempts(store, alias, model, since=state.changed_at, limit=AUDIT_WINDOW)
    return AuditEvidence(role, model, report["candidates"].get(model, {}),
                         config.gate.for_alias(alias).metric or report["primary_metric"], attempts, failed)


def gate_audit(config: FlywheelConfig, book: RouteBook, store: LogStore, alias: str) -> Decision | None:
    """Judge what serves the alias on the teacher's audits since it began, and on how often
    it failed (None: the teacher answers everything): its student, or in a canary its
    candidate. One that clearly falls short is taken off and the decision recorded. A student is demoted: the
    alias goes back to its teacher, which answers everything (and so logs fresh training
    data) until a turn promotes a better student; the demoted one stays the incumbent that
    student must not regress from. A canary's candidate is withdrawn: the alias goes back
    to its student, or its teacher."""
    state = book.get(alias)
    if (evidence := audit_evidence(config, store, alias, state)) is None:
        return None
    decision = decide_audit(config, evidence, alias, state.changed_at, state.student_adapter)
    telemetry.shadow_trial(alias, evidence.model, decision.eval_size, decision.candidate_score)
    if decision.pending:
        return decision
    outcome = "demoted" if evidence.role == "student" else "withdrawn"
    decision = record_decision(config, decision.model_copy(update={"outcome": outcome}))
    mode = "teacher" if evidence.role == "student" or not state.student else "student"
    book.set_mode(alias, mode, reason=f"audit failed: {decision.path.name}")
    return decision
