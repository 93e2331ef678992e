"""Metrics on hand-made cases (NVIDIA-blueprint-style tool calls included), the judge's
reply parsing, bootstrap statistics, and the LLM judge's A/B bookkeeping."""

import json
import math
import random

import httpx
import numpy
import pytest

from flywheel.judge import Judge, LLMJudge, parse_rating, parse_verdict
from flywheel.metrics import normalize, rouge_l, text_scores, token_f1, tool_calls, tool_scores
from flywheel.stats import interval, lower_bound, paired_difference, upper_bound


def call(name, arguments):
    return {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": name, "arguments": arguments}}]}


REFERENCE = call("request_refund", {"order_id": "ORD-1", "amount": 42.5, "reason": "damaged"})  # blueprint: object


@pytest.mark.parametrize(("answer", "name", "both", "valid"), [
    (call("request_refund", '{"reason": "damaged", "amount": "42.50", "order_id": "ORD-1"}'), 1, 1, 1),
    (call("request_refund", '{"order_id": "ORD-1", "amount": 40, "reason": "damaged"}'), 1, 0, 1),
    (call("start_return", '{"order_id": "ORD-1", "reason": "damaged"}'), 0, 0, 1),
    (call("request_refund", '{"order_id": "ORD-1", "amount": 42.5'), 0, 0, 0),  # invalid JSON: wrong, no crash
    (call("request_refund", '["ORD-1"]'), 0, 0, 0),
    ({"role": "assistant", "content": "I have refunded you."}, 0, 0, 0),
    (None, 0, 0, 0),  # the candidate never answered
    ({"role": "assistant", "tool_calls": [{"function": "garbage"}]}, 0, 0, 0),
])
def test_tool_call_scores(answer, name, both, valid):
    assert tool_scores(answer, REFERENCE) == {"function_name": name, "function_name_and_args": both,
                                              "valid_call": valid}


def test_text_reference_wants_a_text_answer_and_normalization_is_forgiving():
    text = {"role": "assistant", "content": "We ship to Canada."}
    assert tool_scores({"role": "assistant", "content": "Yes!"}, text) == {"function_name": 1,
                                                                          "function_name_and_args": 1}
    assert tool_scores(call("get_order_status", "{}"), text)["function_name"] == 0
    assert normalize({"b": [" x ", "7"], "a": 1}) == {"a": 1.0, "b": ["x", 7.0]}
    assert tool_calls(call("f", "")) == [("f", {})]


def test_text_metrics():
    assert text_scores({"content": "Paris, France."}, {"content": "paris france"})["exact_match"] == 1
    assert token_f1("the cat sat", "the cat sat down") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert rouge_l("a b c d", "a c d") == pytest.approx(2 * 0.75 * 1 / 1.75)
    assert token_f1("", "") == 1 and rouge_l("x", "") == 0


@pytest.mark.parametrize(("reply", "rating"), [
    ("Correct and complete.\nRATING: 10", 10), ("rating: 7/10", 7), ("Rating - 3", 3), ("8/10", 8), ("9", 9),
    ("RATING: 12", None), ("no idea", None), ("", None), (None, None), ("Rating: 4\nOn reflection, RATING: 6", 6),
])
def test_rating_parsing(reply, rating):
    assert parse_rating(reply) == rating


def test_verdict_parsing():
    assert parse_verdict("B is better.\nVERDICT: B") == "b"
    assert parse_verdict("verdict: Tie") == "tie" and parse_verdict("A wins") is None


def test_intervals_and_paired_differences():
    low = interval([0, 1] * 50, seed=1)
    assert low["mean"] == 0.5 and low["low"] < 0.5 < low["high"] and low["high"] - low["low"] < 0.25
    assert interval([1.0] * 10) == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 10}
    better = paired_difference([1] * 40 + [0] * 10, [0] * 40 + [0] * 10, seed=1)
    assert better["low"] > 0.6
    with pytest.raises(ValueError):
        paired_difference([1], [1, 0])


def test_the_anytime_bound_holds_when_checked_after_every_score():
    """2,000 seeded runs of 500 scores whose true mean is exactly 0.9, the bound checked
    after each score: the share of runs it ever falls below 0.9 must stay within its 5%
    (it is conservative, so well within). The high end of an ordinary 95% interval, checked
    the same way from the 10th score on, falls below 0.9 in about 10% of the runs: the
    reason the watcher, which looks at every tick, needs the anytime bound."""
    scores = (numpy.random.default_rng(7).random((2000, 500)) < 0.9).astype(float)
    n = numpy.arange(1, 501)
    means = scores.cumsum(axis=1) / n
    anytime = (upper_bound(means, n, anytime=True) < 0.9).any(axis=1).mean()
    fixed = (upper_bound(means, n) < 0.9).any(axis=1).mean()  # right at one n, wrong at every n
    ordinary = ((means + 1.96 * numpy.sqrt(means * (1 - means) / n) < 0.9) & (n >= 10)).any(axis=1).mean()
    assert anytime <= 0.05 and ordinary > 0.06 and fixed > 0.06
    assert upper_bound(0.0, 2, anytime=True) > 0.9 > upper_bound(0.0, 3, anytime=True)  # all wrong: 3 settle it
    assert upper_bound(0.5, 12, anytime=True) > 0.9 > upper_bound(0.5, 24, anytime=True)
    assert upper_bound(1.0, 1, anytime=True) == 1.0


def test_the_anytime_bound_is_never_looser_than_hoeffdings_and_far_tighter_near_the_edges():
    """The Chernoff (KL) bound against Hoeffding's at the same alpha split, on a grid of
    means and counts: never above it, and where the gate needs it (a 70%-right candidate
    against a 0.95 ratio, before the default 50 pairs) it settles what Hoeffding cannot."""
    means, n = numpy.linspace(0, 1, 21)[:, None], numpy.arange(1, 400)[None, :]
    hoeffding = numpy.minimum(1.0, means + numpy.sqrt(numpy.log(n * (n + 1) / 0.05) / (2 * n)))
    assert (upper_bound(means, n, anytime=True) <= hoeffding + 1e-9).all()
    assert upper_bound(0.7, 40, anytime=True) < 0.95 < 0.7 + math.sqrt(math.log(50 * 51 / 0.05) / 100)
    assert isinstance(upper_bound(0.5, 10), float) and upper_bound(0.3, 0, anytime=True) == 1.0


def test_the_lower_bound_mirrors_the_upper_and_does_not_trust_a_perfect_small_sample():
    """A bootstrap interval of 100 scores that are all 1 is [1, 1]; the Chernoff lower
    bound says what 100 perfect answers do prove: at least 0.97 (95%), at least 0.88 when
    the sample may be looked at every time it grows."""
    assert interval([1.0] * 100)["low"] == 1.0
    assert 0.97 < lower_bound(1.0, 100) < 0.971 and 0.88 < lower_bound(1.0, 100, anytime=True) < 0.89
    assert lower_bound(0.3, 50) == pytest.approx(1 - upper_bound(0.7, 50))
    assert lower_bound(0.5, 200) < 0.5 < upper_bound(0.5, 200) and lower_bound(0.0, 10) == 0.0


def test_llm_judge_maps_shuffled_verdicts_back_and_skips_identical_answers():
    """A stand-in judge endpoint (an external LLM cannot run here): it always prefers
    whichever answer mentions 'refund', so the mapping back from A/B can be checked."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["messages"][1]["content"]
        calls.append(prompt)
        if "Answer A" not in prompt:
            return httpx.Response(200, json={"choices": [{"message": {"content": "Looks right.\nRATING: 9"}}]})
        first = prompt.split("Answer A:")[1].split("Answer B:")[0]
        return httpx.Response(200, json={"choices": [{"message": {
            "content": f"VERDICT: {'A' if 'refund' in first else 'B'}"}}]})

    client = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://judge")
    judge = LLMJudge("http://judge", "judge-model", client=client)
    rng = random.Random(0)
    outcomes = [judge.compare("q", "call refund", "call cancel", rng)["winner"] for _ in range(12)]
    assert set(outcomes) == {"candidate"}  # whatever order it was shown in
    assert len({judge.compare("q", "x", "y", rng)["order"] for _ in range(12)}) == 2  # the order is shuffled
    before = len(calls)
    assert judge.compare("q", "same", " same ", rng) == {"winner": "tie", "explanation": "identical answers",
                                                         "order": None}
    assert len(calls) == before
    assert judge.rate("q", "ref", "ans") == {"rating": 9, "explanation": "Looks right.\nRATING: 9"}


def test_judge_scores_items_without_crashing_on_garbage():
    items = [{"id": "1", "label": "request_refund", "request": {"messages": []}, "reference": REFERENCE,
              "answer": call("request_refund", "{oops")},
             {"id": "2", "label": "no_tool", "request": {"messages": []},
              "reference": {"role": "assistant", "content": "Free returns within 30 days."},
              "answer": {"role": "assistant", "content": "Returns are free for 30 days."}}]
    scores = Judge(embeddings=False).score(items)
    assert scores[0]["function_name"] == 0 and scores[0]["valid_call"] == 0
    assert scores[1]["function_name"] == 1 and 0 < scores[1]["token_f1"] < 1
