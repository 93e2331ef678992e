"""Curation step by step on small in-memory data: the sample workload, per-record
preparation, dedup, split, ICL picks and dataset writing (no Ray here; the pipeline on
Ray Data is in tests/integration/test_curation.py)."""

import json
from collections import Counter
from pathlib import Path

import pyarrow
import pytest

from flywheel.adapters import AdapterVersion
from flywheel.datasets import load_dataset, write_dataset
from flywheel.examples import NO_TOOL, ExampleRules, prepare_batch
from flywheel.icl import uniform_examples
from flywheel.records import Feedback, LogRecord, record_from_json
from flywheel.splits import near_duplicates, newest_per_key, stratified_split
from flywheel.workloads.support_tools import OTHER_MODEL, TEACHER, TOOLS, generate

REPO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "local.yaml"
TOOL = [{"type": "function", "function": {"name": "get_order_status", "parameters": {"type": "object"}}}]


def test_sample_workload_is_deterministic_realistic_and_importable():
    first, again = list(generate(600, seed=3)), list(generate(600, seed=3))
    assert json.dumps(first) == json.dumps(again) and json.dumps(first) != json.dumps(list(generate(600, seed=4)))
    assert len(TOOLS) >= 8
    records = [record_from_json(item) for item in first]  # every line imports
    assert len({r.id for r in records}) == 600
    statuses = Counter(r.status for r in records)
    assert 0 < statuses["error"] < 60
    assert any(r.feedback and r.feedback[0].correction for r in records)
    assert any(r.feedback and not r.feedback[0].correction for r in records)
    assert Counter(r.model for r in records)[OTHER_MODEL] > 0
    forms = Counter(type(item["response"]["choices"][0]["message"].get("tool_calls", [{}])[0]
                         .get("function", {}).get("arguments")).__name__ for item in first if item.get("response"))
    assert forms["dict"] > 50 and forms["str"] > 50  # arguments as objects and as strings
    users = [r.request["messages"][-1]["content"] for r in records]
    assert len(set(users)) > 500 and any(u.isupper() for u in users) and any("@" in u for u in users)
    assert sum(len(r.request["messages"]) > 2 for r in records) > 20  # some multi-turn context


def test_sample_arguments_follow_from_the_conversation():
    """A student can only learn arguments the request states: no hidden random values."""
    from flywheel.workloads.support_tools import REASON_WORDS, URGENT

    seen = Counter()
    for item in generate(3000, seed=5):
        calls = (item.get("response") or {}).get("choices", [{}])[0].get("message", {}).get("tool_calls")
        if not calls or item.get("feedback"):
            continue
        function = calls[0]["function"]
        arguments = function["arguments"] if isinstance(function["arguments"], dict) else json.loads(
            function["arguments"])
        text = item["request"]["messages"][-1]["content"].lower()
        if function["name"] == "cancel_order":
            stated = any(words in text for reason in REASON_WORDS for words in REASON_WORDS[reason])
            assert ("reason" in arguments) == stated, text
            seen["cancel"] += 1
        if function["name"] == "escalate_to_human":
            assert arguments["priority"] == ("high" if any(w in text for w in URGENT) else "normal"), text
            seen["escalate"] += 1
        if "order_id" in arguments:
            assert arguments["order_id"].removeprefix("ORD-").lower() in text, text
    assert seen["cancel"] > 50 and seen["escalate"] > 50


def _record(user="Where is ORD-123456?", tool="get_order_status", args='{"order_id": "ORD-123456"}', **fields):
    message = {"role": "assistant", "content": None,
               "tool_calls": [{"id": "c1", "type": "function", "function": {"name": tool, "arguments": args}}]}
    base = {"workload_id": "w", "client_id": "c", "model": TEACHER, "timestamp": 1_700_000_000,
            "request": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": user}],
                        "tools": TOOL},
            "response": {"choices": [{"message": message}]}}
    return LogRecord(**{**base, **fields})


def _prepare(records, **rules):
    table = pyarrow.table({"id": [r.id for r in records], "timestamp": [r.timestamp for r in records],
                           "record": [r.model_dump_json() for r in records]})
    return prepare_batch(table, ExampleRules(**{"teacher_models": (TEACHER,), **rules})).to_pylist()


def test_prepare_filters_and_explains_each_drop():
    correction = {"role": "assistant", "content": "",
                  "tool_calls": [{"type": "function", "function": {"name": "cancel_order", "arguments": "{}"}}]}
    rows = _prepare([
        _record(),
        _record(model="someone-else"),
        _record(feedback=[Feedback(rating=-1)]),
        _record(feedback=[Feedback(rating=3)]),  # a low 0-10 score is negative too
        _record(feedback=[Feedback(rating=1)]),  # thumbs up is kept
        _record(feedback=[Feedback(rating=-1, correction=correction)]),
        _record(args="{not json"),
        _record(response={"choices": [{"message": {"role": "assistant", "content": "  "}}]}),
        _record(user="x" * 20_000),
    ])
    assert [row["reason"] for row in rows] == ["", "not_teacher", "negative_feedback", "negative_feedback", "",
                                               "", "invalid_format", "empty_answer", "too_long"]
    assert rows[5]["source"] == "correction" and rows[5]["label"] == "cancel_order"
    assert rows[0]["source"] == "teacher" and rows[0]["label"] == "get_order_status"


def test_served_traffic_counts_by_the_model_that_answered_not_the_alias_asked():
    rows = _prepare([
        _record(model="support-tools", base_model=TEACHER),  # an alias in teacher mode
        _record(model="support-tools", base_model="small", adapter="v1"),  # the same alias, a student answering
        _record(model="support-tools", base_model=TEACHER, tags={"shadow_of": "01J"}),  # never ground truth
        _record(model="support-tools", base_model="small", adapter="v1",  # a student answer a reviewer corrected
                feedback=[Feedback(rating=-1, correction={"role": "assistant", "content": "Fixed."})]),
        _record(model="support-tools", base_model=TEACHER,  # the teacher auditing a student's answer
                tags={"shadow_of": "01J", "role": "teacher"}),
    ])
    assert [row["reason"] for row in rows] == ["", "not_teacher", "not_teacher", "", ""]
    assert rows[3]["source"] == "correction"


def test_with_no_teacher_models_listed_students_never_learn_from_their_own_answers():
    """After a promotion a student answers the alias: with an empty `teacher_models` its
    answers must not become the next turn's training data (or its eval references); the
    teacher's audits of them must."""
    rows = _prepare([
        _record(model="support-tools", base_model=TEACHER),
        _record(model="support-tools", base_model="small", adapter="v1", tags={"role": "student"}),
        _record(model="support-tools", base_model="small", adapter="v2", tags={"shadow_of": "01J",
                                                                            "role": "candidate"}),
        _record(model="support-tools", base_model=TEACHER, tags={"shadow_of": "01J", "role": "teacher"}),
        _record(model="imported-model"),  # imported history: whatever answered it
    ], teacher_models=())
    assert [row["reason"] for row in rows] == ["", "not_teacher", "not_teacher", "", ""]


def test_prepare_redacts_pii_everywhere_and_keys_ignore_spacing_and_case():
    rows = _prepare([
        _record(user="Invoice for ORD-123456 to anna@example.com, call +1 415 555 0132",
                tool="send_invoice", args='{"order_id": "ORD-123456", "email": "anna@example.com"}'),
        _record(user="  where IS   ord-123456? "),
        _record(user="where is ord-123456?", response={"choices": [{"message": {"role": "assistant",
                                                                                 "content": "Hi!"}}]}),
    ])
    assert "anna@example.com" not in rows[0]["turns"] and "<EMAIL>" in rows[0]["turns"]
    assert "ORD-123456" in rows[0]["turns"] and json.loads(rows[0]["system"])["content"] == "Be brief."
    messages = json.loads(rows[0]["turns"])
    assert json.loads(messages[-1]["tool_calls"][0]["function"]["arguments"])["email"] == "<EMAIL>"
    assert json.loads(rows[0]["pii"]) == {"EMAIL": 2, "PHONE": 1}
    assert rows[1]["key"] == rows[2]["key"] and rows[2]["label"] == NO_TOOL
    assert rows[0]["prefix"] == rows[1]["prefix"] != ""


def test_dedup_keeps_the_newest_and_near_duplicates_collapse():
    assert newest_per_key(["a", "b", "a", "a"], [1, 5, 3, 3], ["1", "2", "3", "4"]) == [1, 3]
    texts = ["please cancel my order ord-1 right now thanks", "please cancel my order ord-1 right now thanks!",
             "where is my parcel it is late"]
    assert near_duplicates(texts, [1, 2, 3], ["a", "b", "c"], threshold=0.5) == [1, 2]


def test_stratified_split_is_proportional_deterministic_and_handles_odd_labels():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 9 + ["solo"]
    ids = [f"id{i:03d}" for i in range(100)]
    split = stratified_split(ids, labels, eval_size=20, val_ratio=0.25, seed=1)
    assert sorted(split.train + split.val + split.eval) == list(range(100))
    assert Counter(labels[i] for i in split.eval) == {"a": 12, "b": 6, "c": 2}
    assert "solo" in split.messages[0] and labels.index("solo") in split.train
    reversed_split = stratified_split(ids[::-1], labels[::-1], eval_size=20, val_ratio=0.25, seed=1)
    assert sorted(ids[::-1][i] for i in reversed_split.eval) == sorted(ids[i] for i in split.eval)
    one = stratified_split(ids[:10], ["x"] * 10, eval_size=3, val_ratio=0, seed=1)
    assert len(one.eval) == 3 and "not stratified" in one.messages[0]


def test_a_growing_log_keeps_its_eval_rows_out_of_earlier_training_rows():
    """Turn 2 re-splits turn 1's records plus new ones: its eval rows must not be rows turn
    1's student trained on, or the incumbent is scored on its own training data. The rows
    next in line after a label's eval rows are its val rows, then its train rows, so an
    eval split that grows past val (here: `eval_size` raised, no val split) reaches rows a
    student learned unless they are named in `trained`."""
    import random

    rng = random.Random(3)
    labels = [rng.choice("abcd") for _ in range(2500)]
    ids = [f"r{i:05d}" for i in range(2500)]
    first = stratified_split(ids[:2000], labels[:2000], eval_size=100, val_ratio=0, seed=0)
    trained = {ids[i] for i in first.train}
    blind = stratified_split(ids, labels, eval_size=200, val_ratio=0, seed=0)
    assert len({ids[i] for i in blind.eval} & trained) > 40
    second = stratified_split(ids, labels, eval_size=200, val_ratio=0, seed=0, trained=trained)
    evaluated = {ids[i] for i in second.eval}
    assert not evaluated & trained and len(second.eval) == 200 and not second.messages
    assert evaluated >= {ids[i] for i in first.eval}  # the same eval rows, plus new ones
    assert Counter(labels[i] for i in second.eval) == Counter(labels[i] for i in blind.eval)  # still proportional
    assert sorted(second.train + second.val + second.eval) == list(range(2500))
    starved = stratified_split(ids[:2000], labels[:2000], eval_size=300, val_ratio=0, seed=0, trained=trained)
    assert {ids[i] for i in starved.eval} == {ids[i] for i in first.eval} and "kept out of eval" in starved.messages[0]
    same = stratified_split(ids[:2000], labels[:2000], eval_size=100, val_ratio=0.1, seed=0)
    assert same == stratified_split(ids[:2000], labels[:2000], eval_size=100, val_ratio=0.1, seed=0,
                                    trained={ids[i] for i in same.train})  # curating again changes nothing


def test_uniform_icl_covers_labels_within_the_budget():
    labels = ["a", "a", "b", "b", "c"]
    assert sorted(labels[i] for i in uniform_examples(labels, [10] * 5, 1, 100, seed=0)) == ["a", "b", "c"]
    assert len(uniform_examples(labels, [10] * 5, 2, 25, seed=0)) == 2


def test_dataset_versions_are_content_addressed(tmp_path):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    example = {"id": "x", "label": "a", "source": "teacher", "tools": "[]", "messages": json.dumps(messages)}
    splits = {"train": [example], "val": [], "eval": [{**example, "id": "y", "icl_ids": ["x"]}], "icl": []}
    first = write_dataset(tmp_path, "w", splits, {"prefix": None}, {"train": 1}, [])
    again = write_dataset(tmp_path, "w", {**splits, "train": [dict(example)]}, {"prefix": None}, {"train": 1}, [])
    assert first.content_hash == again.content_hash and first.dataset_id == again.dataset_id
    other = write_dataset(tmp_path, "w", {**splits, "train": []}, {"prefix": None}, {"train": 0}, [])
    assert other.dataset_id != first.dataset_id
    loaded = load_dataset(tmp_path, first.dataset_id)
    assert loaded.rows("train") == [{**example, "messages": messages, "tools": []}]
    assert loaded.rows("eval")[0]["icl_ids"] == ["x"]
    table = pyarrow.parquet.read_table(first.path / "eval.parquet")
    assert json.loads(table["messages"][0].as_py()) == messages
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path, "nope")


def test_whole_pipeline_in_process_including_a_single_label_workload(tmp_path):
    """`curate_workload` end to end without Ray (the same code Ray Data runs per batch)."""
    from flywheel.config import load_config
    from flywheel.curation import curate_workload, prepare_in_process
    from flywheel.store import open_store

    config = load_config(REPO_CONFIG, {"home": str(tmp_path), "curate.teacher_models": [TEACHER],
                                       "curate.icl.semantic": False, "curate.eval_size": 30})
    store = open_store(config.store_url)
    store.write_batch([record_from_json(item) for item in generate(400, seed=2)])
    version = curate_workload(config, store, "support-tools", prepare=prepare_in_process)
    assert version.counts["eval"] == 30 and version.counts["train"] > 250
    assert version.manifest()["prefix"]["share"] > 0.9 and not version.rows("train")[0]["tools"]
    assert version.manifest()["kept_out_of_eval"] == {"trained_on_by": [], "rows": 0}
    learned = AdapterVersion(adapter_id="student-1", base_model="small", workload_id="support-tools",
                             dataset_id=version.dataset_id, dataset_hash=version.content_hash, hyperparameters={},
                             metrics={}, path=config.adapters_dir / "small" / "student-1")
    learned.path.mkdir(parents=True)
    learned.save()
    store.write_batch([record_from_json(item) for item in generate(100, seed=3)])
    grown = curate_workload(config.model_copy(update={"curate": config.curate.model_copy(update={"eval_size": 100,
                                                                                          "val_ratio": 0})}),
                            store, "support-tools", prepare=prepare_in_process)
    assert grown.counts["eval"] == 100 and grown.manifest()["kept_out_of_eval"]["trained_on_by"] == [version.dataset_id]
    learned_from = {row["id"] for split in ("train", "val") for row in version.rows(split)}
    assert version.counts["val"] > 0 and not {row["id"] for row in grown.rows("eval")} & learned_from
    one = _record()
    store.write_batch([LogRecord(**{**one.model_dump(exclude={"id"}), "workload_id": "one", "timestamp": 1e9 + i,
                                    "request": {"messages": [{"role": "user", "content": f"where is ORD-{i}?"}]}})
                       for i in range(25)])
    single = curate_workload(config.model_copy(update={"curate": config.curate.model_copy(update={"val_ratio": 0})}),
                             store, "one", prepare=prepare_in_process)
    assert single.counts["val"] == 0 and any("not stratified" in m for m in single.messages)
    store.close()
