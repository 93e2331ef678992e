"""The promotion gate on hand-made reports: pass, fail on quality, fail on regression,
too few items; every decision recorded; only a pass moves the alias."""

import json

import pytest

from flywheel.config import FlywheelConfig
from flywheel.evaluation import EvalReport
from flywheel.gate import decide, gate_and_promote, list_decisions
from flywheel.routes import open_route_book
from flywheel.stats import interval

METRIC = "function_name_and_args"


def make_report(tmp_path, scores):
    """A report over per-item 0/1 scores, summarised the way `evaluate` does."""
    return EvalReport(
        run_id="eval-test", dataset_id="support-abc", workload_type="tool_calling", primary_metric=METRIC,
        incumbent="base", candidates={name: {METRIC: interval(values)} for name, values in scores.items()},
        differences={}, per_label={}, scores={name: {METRIC: values} for name, values in scores.items()},
        item_ids=[str(i) for i in range(len(next(iter(scores.values()))))], latency_ms={}, failures={},
        path=tmp_path, chart=tmp_path / "chart.png")


def items(correct, total):
    return [1.0] * correct + [0.0] * (total - correct)


@pytest.fixture
def config(tmp_path):
    for name in ("old", "new"):
        (tmp_path / "adapters" / "small" / name).mkdir(parents=True)
        (tmp_path / "adapters" / "small" / name / "adapter_config.json").write_text("{}")
    return FlywheelConfig.model_validate({"home": str(tmp_path), "serve": {"models": [{"name": "small", "source": "x"}]},
                                          "gate": {"min_eval_size": 50, "min_teacher_ratio": 0.95,
                                                   "max_regression": 0.02}})


def test_a_good_candidate_with_no_incumbent_passes(config, tmp_path):
    decision = decide(config, make_report(tmp_path, {"new": items(97, 100), "teacher": items(100, 100)}),
                      "new", "support", None)
    assert decision.promote and decision.teacher_ratio == pytest.approx(0.97)
    assert all(reason.startswith("pass") for reason in decision.reasons) and len(decision.reasons) == 3


def test_below_the_teacher_ratio_fails(config, tmp_path):
    decision = decide(config, make_report(tmp_path, {"new": items(90, 100)}), "new", "support", None)
    assert not decision.promote and decision.teacher_score == 1.0  # unevaluated teacher: its own references
    assert any(reason.startswith("fail") and "90.0% of the teacher" in reason for reason in decision.reasons)


def test_with_require_confidence_the_lower_bound_must_reach_the_ratio(config, tmp_path):
    """97/100 passes on its mean; its 95% lower bound (0.909) does not reach 95% of the
    teacher. 300/300 bounds itself at 0.99."""
    sure = config.model_copy(update={"gate": config.gate.model_copy(update={"require_confidence": True})})
    assert decide(config, make_report(tmp_path, {"new": items(97, 100)}), "new", "support", None).promote
    doubted = decide(sure, make_report(tmp_path, {"new": items(97, 100)}), "new", "support", None)
    assert not doubted.promote and doubted.teacher_ratio == pytest.approx(0.97)
    (reason,) = [reason for reason in doubted.reasons if reason.startswith("fail")]
    assert "at least 0.909" in reason and "needs >= 95%" in reason
    assert decide(sure, make_report(tmp_path, {"best": items(300, 300)}), "best", "support", None).promote


def test_an_alias_may_have_its_own_bar_and_rollout(tmp_path):
    """`gate.per_alias`: 97/100 passes the default 0.95 but not `billing`'s 0.98, and a pass
    on `billing` starts a canary trial where the default promotes; overrides are checked
    like the fields they override."""
    for name in ("old", "new"):
        (tmp_path / "adapters" / "small" / name).mkdir(parents=True)
        (tmp_path / "adapters" / "small" / name / "adapter_config.json").write_text("{}")
    base = {"home": str(tmp_path), "serve": {"models": [{"name": "small", "source": "x"}]}}
    config = FlywheelConfig.model_validate({**base, "gate": {"min_eval_size": 50, "per_alias": {
        "billing": {"min_teacher_ratio": 0.98}, "ledger": {"rollout": "canary", "canary_percent": 20}}}})
    report = make_report(tmp_path, {"new": items(97, 100)})
    assert decide(config, report, "new", "support", None).promote
    strict = decide(config, report, "new", "billing", None)
    assert not strict.promote and any("98%" in reason for reason in strict.reasons if reason.startswith("fail"))
    assert config.gate.for_alias("ledger").min_eval_size == 50 and config.gate.for_alias(None) is config.gate
    book = open_route_book(config)
    assert gate_and_promote(config, book, report, "new", "ledger").outcome == "canary trial"
    assert (book.get("ledger").mode, book.get("ledger").percent) == ("canary", 20)
    assert gate_and_promote(config, book, report, "new", "support").outcome == "promoted"
    for bad, said in (({"min_teacher_ratio": -1}, "per_alias.billing: min_teacher_ratio"),
                      ({"nonsense": 1}, "per_alias.billing: nonsense"),
                      ({"aliases": {}}, "aliases cannot differ per entry")):
        with pytest.raises(ValueError, match=said):
            FlywheelConfig.model_validate({**base, "gate": {"per_alias": {"billing": bad}}})


def test_a_regression_against_the_incumbent_fails_even_above_the_teacher_ratio(config, tmp_path):
    # the candidate gets 10 items wrong that the incumbent had right: lower bound well below -0.02
    report = make_report(tmp_path, {"new": items(96, 100), "old": items(100, 100)})
    decision = decide(config, report, "new", "support", "old")
    assert not decision.promote
    assert decision.versus_incumbent["low"] < -0.02 and decision.versus_incumbent["mean"] == pytest.approx(-0.04)
    assert decision.reasons[1].startswith("pass") and decision.reasons[2].startswith("fail")


def test_equal_to_the_incumbent_passes(config, tmp_path):
    report = make_report(tmp_path, {"new": items(98, 100), "old": items(98, 100)})
    assert decide(config, report, "new", "support", "old").promote


def test_too_few_items_fail_and_an_unevaluated_incumbent_fails(config, tmp_path):
    small = decide(config, make_report(tmp_path, {"new": items(20, 20)}), "new", "support", None)
    assert not small.promote and small.reasons[0] == "fail: 20 items scored (the gate needs >= 50)"
    missing = decide(config, make_report(tmp_path, {"new": items(99, 100)}), "new", "support", "old")
    assert not missing.promote and "was not evaluated" in missing.reasons[-1]
    ghost = decide(config, make_report(tmp_path, {"new": items(99, 100)}), "ghost", "support", None)
    assert not ghost.promote and ghost.eval_size == 0


def test_gate_and_promote_records_every_decision_and_moves_the_alias_only_on_a_pass(config, tmp_path):
    book = open_route_book(config)
    book.promote("support", "old")
    refused = gate_and_promote(config, book, make_report(tmp_path, {"new": items(80, 100), "old": items(99, 100)}),
                               "new", "support")
    assert not refused.promote and book.get("support").student == "small:old"
    passed = gate_and_promote(config, book, make_report(tmp_path, {"new": items(100, 100), "old": items(99, 100)}),
                              "new", "support")
    assert passed.promote and passed.incumbent == "old" and book.get("support").student == "small:new"
    assert "gate passed" in book.get("support").reason
    recorded = list_decisions(config, "support")
    assert [d["promote"] for d in recorded] == [False, True]
    assert json.loads(passed.path.read_text())["reasons"] == passed.reasons


@pytest.mark.parametrize(("rollout", "percent"), [("shadow", 0.0), ("canary", 25.0)])
def test_with_a_trial_rollout_a_pass_starts_a_trial_and_the_student_keeps_its_place(config, tmp_path, rollout,
                                                                                    percent):
    config = config.model_copy(update={"gate": config.gate.model_copy(update={"rollout": rollout,
                                                                              "canary_percent": 25})})
    book = open_route_book(config)
    book.promote("support", "old")
    passed = gate_and_promote(config, book, make_report(tmp_path, {"new": items(100, 100), "old": items(99, 100)}),
                              "new", "support")
    state = book.get("support")
    assert passed.promote and passed.outcome == f"{rollout} trial"
    assert (state.mode, state.student, state.candidate, state.percent) == (rollout, "small:old", "small:new", percent)
    assert "on trial" in state.reason
    refused = gate_and_promote(config, book, make_report(tmp_path, {"new": items(50, 100), "old": items(99, 100)}),
                               "new", "support")
    assert refused.outcome == "unchanged" and book.get("support").changed_at == state.changed_at
    assert [d["outcome"] for d in list_decisions(config, "support")] == [f"{rollout} trial", "unchanged"]
