"""Erasure: deleting records with the dataset rows made from them (`flywheel/erasure.py`,
`datasets.remove_rows`), on a real SQLite store and datasets curated in process."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet
import pytest

from flywheel import erasure
from flywheel.adapters import AdapterVersion, list_adapters
from flywheel.config import FlywheelConfig, load_config
from flywheel.curation import curate_workload, prepare_in_process
from flywheel.datasets import SPLITS, load_dataset, remove_rows, write_dataset
from flywheel.erasure import erase
from flywheel.records import LogRecord, record_from_json
from flywheel.routes import RouteError, open_route_book
from flywheel.store import LogFilter, open_store
from flywheel.turns import RunBook, TurnBusy
from flywheel.workloads.support_tools import TEACHER, generate

REPO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "local.yaml"


def _example(row_id: str, label: str = "a") -> dict:
    messages = [{"role": "user", "content": f"question {row_id}"}, {"role": "assistant", "content": "answer"}]
    return {"id": row_id, "label": label, "source": "teacher", "tools": "[]", "messages": json.dumps(messages)}


def _files(path: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in sorted(path.iterdir())}


def test_removing_rows_leaves_the_version_a_fresh_curation_of_the_rest_would_write(tmp_path):
    splits = {"train": [_example("x1"), _example("x2", "b")], "val": [_example("v1")],
              "eval": [{**_example("y1"), "icl_ids": ["x1", "x2"]}], "icl": [_example("x1")]}
    manifest = {"prefix": None, "labels": {}, "sources": {}}
    version = write_dataset(tmp_path / "full", "w", splits, manifest, {"logged": 5, "train": 2, "icl": 1}, [])
    before = _files(version.path)

    assert remove_rows(version.path, {"x1", "gone"}, dry_run=True) == {"train": 1, "val": 0, "eval": 0, "icl": 1}
    assert _files(version.path) == before  # a dry run writes nothing
    assert remove_rows(version.path, {"x1", "gone"}) == {"train": 1, "val": 0, "eval": 0, "icl": 1}

    rest = {"train": [_example("x2", "b")], "val": [_example("v1")], "eval": [{**_example("y1"), "icl_ids": ["x2"]}],
            "icl": []}
    fresh = write_dataset(tmp_path / "rest", "w", rest, manifest, {}, [])
    erased = load_dataset(tmp_path / "full", version.dataset_id)  # same folder, same id
    assert erased.content_hash == fresh.content_hash != version.content_hash
    for split in SPLITS:
        assert (erased.path / f"{split}.jsonl").read_bytes() == (fresh.path / f"{split}.jsonl").read_bytes()
        assert pyarrow.parquet.read_table(erased.path / f"{split}.parquet").to_pylist() == \
            pyarrow.parquet.read_table(fresh.path / f"{split}.parquet").to_pylist()
    written = erased.manifest()
    assert written["counts"] == {"logged": 5, "train": 1, "val": 1, "eval": 1, "icl": 0}
    assert written["labels"]["train"] == {"b": 1} and written["sources"] == {"teacher": 1}
    assert [entry["rows"] for entry in written["erasures"]] == [{"train": 1, "val": 0, "eval": 0, "icl": 1}]
    assert remove_rows(version.path, {"x1"}) == {split: 0 for split in SPLITS}  # nothing left to remove


def test_erasing_a_client_removes_its_rows_everywhere_and_names_the_adapters_that_learned_them(tmp_path,
                                                                                             monkeypatch):
    config = load_config(REPO_CONFIG, {"home": str(tmp_path), "curate.teacher_models": [TEACHER],
                                       "curate.icl.semantic": False, "curate.eval_size": 30})
    store = open_store(config.store_url)
    records = [record_from_json(item) for item in generate(400, seed=2)]
    store.write_batch(records)
    version = curate_workload(config, store, "support-tools", prepare=prepare_in_process)
    client = "web-12"
    ids = {record.id for record in records if record.client_id == client}
    in_dataset = {split: len(ids & {row["id"] for row in version.rows(split)}) for split in SPLITS}
    assert in_dataset["train"] > 0  # the client's answers were learned from

    def adapter(adapter_id, dataset_id, **hyperparameters):
        made = AdapterVersion(adapter_id=adapter_id, base_model="small", dataset_id=dataset_id, dataset_hash="h",
                              hyperparameters=hyperparameters, metrics={},
                              path=config.adapters_dir / "small" / adapter_id)
        made.path.mkdir(parents=True)
        made.save()

    adapter("learned", version.dataset_id)
    adapter("warm-from-learned", "support-tools-other", init_adapter="learned")
    adapter("unrelated", "support-tools-other")
    chosen = LogFilter(client_id=client)
    before = _files(version.path)

    dry = erase(config, store, chosen, dry_run=True)
    assert (dry.matched, dry.deleted) == (len(ids), 0) and store.count(chosen) == len(ids)
    assert dry.datasets == {version.dataset_id: {split: n for split, n in in_dataset.items() if n}}
    assert dry.adapters == ["learned", "warm-from-learned"] and _files(version.path) == before
    monkeypatch.setattr(erasure, "SCAN_CHUNK", 7)  # the ids read a slice at a time: the same answer
    assert erase(config, store, chosen, dry_run=True) == dry

    cli = subprocess.run([sys.executable, "-m", "flywheel.cli", "logs", "delete", "--client", client, "--json"],
                         check=False, capture_output=True, text=True, timeout=120,
                         env={"FLYWHEEL_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    shown = json.loads(cli.stdout.strip().splitlines()[-1])
    assert cli.returncode == 0 and (shown["dry_run"], shown["deleted"]) == (True, 0), cli.stderr
    assert (shown["datasets"], shown["adapters"]) == (dry.datasets, dry.adapters)

    with RunBook(config.turns_dir).workload_idle("support-tools"), pytest.raises(TurnBusy):
        erase(config, store, chosen)  # a turn curating the workload could copy the records again
    assert store.count(chosen) == len(ids) and _files(version.path) == before
    assert erase(config, store, chosen, dry_run=True) == dry  # counting needs no lock
    done = erase(config, store, chosen)
    assert (done.matched, done.deleted, done.datasets, done.adapters) == (len(ids), len(ids), dry.datasets,
                                                                         dry.adapters)
    assert store.count(chosen) == 0 and store.count() == len(records) - len(ids)
    erased = load_dataset(config.datasets_dir, version.dataset_id)
    for split in SPLITS:
        rows = erased.rows(split)
        table = pyarrow.parquet.read_table(erased.path / f"{split}.parquet")
        assert not ids & {row["id"] for row in rows} and not ids & set(table["id"].to_pylist())
        assert len(rows) == table.num_rows == version.counts[split] - in_dataset[split] == erased.counts[split]
    again = erase(config, store, chosen)
    assert (again.matched, again.deleted, again.datasets, again.adapters) == (0, 0, {}, [])
    kept = erase(config, store, LogFilter(client_id="web-1"), keep_datasets=True)
    assert kept.deleted > 0 and kept.datasets == {} and load_dataset(config.datasets_dir, version.dataset_id) \
        .content_hash == erased.content_hash
    store.close()


def test_erasing_by_a_text_the_datasets_redacted_still_removes_the_rows_made_from_it(tmp_path):
    """Curation redacts an email out of its copies, so the datasets cannot be searched for
    it: the rows go by the ids of the store's records that hold it."""
    config = load_config(REPO_CONFIG, {"home": str(tmp_path), "curate.teacher_models": [TEACHER],
                                       "curate.icl.semantic": False, "curate.eval_size": 30})
    store = open_store(config.store_url)
    records = [record_from_json(item) for item in generate(300, seed=3)]
    for number in range(0, 300, 25):  # a dozen requests, from several clients, mention one person
        last = records[number].request["messages"][-1]
        last["content"] += " - it's Ana.Lima@example.org"
    store.write_batch(records)
    version = curate_workload(config, store, "support-tools", prepare=prepare_in_process)
    assert "ana.lima" not in "".join((version.path / f"{split}.jsonl").read_text().lower() for split in SPLITS)
    ids = {records[number].id for number in range(0, 300, 25)}
    held = {split: len(ids & {row["id"] for row in version.rows(split)}) for split in SPLITS}
    assert sum(held.values()) > 0 and len({records[number].client_id for number in range(0, 300, 25)}) > 1

    done = erase(config, store, erasure.erasure_filter(contains="ana.lima@example.org"))
    assert (done.matched, done.deleted, done.remembered) == (12, 12, True)
    assert done.datasets == {version.dataset_id: {split: n for split, n in held.items() if n}}
    assert all(store.get(record_id) is None for record_id in ids) and store.count() == 288
    assert not ids & {row["id"] for split in SPLITS for row in load_dataset(config.datasets_dir,
                                                                           version.dataset_id).rows(split)}
    assert store.write_batch([records[0]]) == 0  # a late copy stays out
    store.close()


def test_an_erasure_refuses_a_text_the_records_structure_holds(tmp_path):
    """Field names and roles are in (nearly) every stored record: a text among them
    (`content`, or a name like Tim, inside `timestamp`) would erase them all, so it is
    refused before any count; a person's identifiers pass."""
    store = open_store(f"sqlite:///{tmp_path / 'logs.db'}")
    store.write_batch([record_from_json(item) for item in generate(40, seed=5)])
    for text in ("Content", "Tim", "messages", "ASSISTANT"):
        assert store.count(LogFilter(contains=text)) == 40  # what the refusal spares
        with pytest.raises(ValueError, match="is part of the records' structure"):
            erasure.erasure_filter(contains=["ana.lima@example.org", text])
    for text in ("Tom", "ana.lima@example.org", "+44 7700 900123"):
        assert erasure.erasure_filter(contains=text).contains == (text,)
    store.close()


def test_an_erasure_refuses_what_every_completions_record_holds(tmp_path):
    """A store of `/v1/completions` traffic has its own field names (`prompt`, `text`)."""
    store = open_store(f"sqlite:///{tmp_path / 'logs.db'}")
    store.write_batch([LogRecord(
        id=f"c{number}", timestamp=1_000 + number, workload_id="autocomplete", client_id="ide", model="m",
        request={"model": "m", "prompt": f"def f{number}(x):", "max_tokens": 8},
        response={"id": f"c{number}", "object": "text_completion", "created": 1, "model": "m",
                  "choices": [{"index": 0, "text": f"    return x + {number}", "finish_reason": "length"}]},
        usage={"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}) for number in range(20)])
    for text in ("TEXT", "text_completion", "prompt"):
        assert store.count(LogFilter(contains=text)) == 20
        with pytest.raises(ValueError, match="is part of the records' structure"):
            erasure.erasure_filter(contains=text)
    assert erasure.erasure_filter(contains="return x + 7").contains == ("return x + 7",)
    assert store.count(LogFilter(contains="return x + 7")) == 1
    store.close()


def test_eval_rows_written_without_picks_stay_without(tmp_path):
    splits = {"train": [_example("x1")], "val": [], "eval": [_example("y1")], "icl": []}  # no `icl_ids` key
    version = write_dataset(tmp_path, "w", splits, {"prefix": None}, {}, [])
    eval_jsonl = (version.path / "eval.jsonl").read_bytes()
    assert remove_rows(version.path, {"x1"})["train"] == 1
    assert (version.path / "eval.jsonl").read_bytes() == eval_jsonl and "icl_ids" not in version.rows("eval")[0]


def test_the_erasure_benchmark_runs_at_a_small_size():
    """bench/erasure.py asserts that each erasure matched the client's records."""
    result = subprocess.run([sys.executable, "bench/erasure.py", "--records", "2000", "--clients", "50",
                             "--versions", "2", "--rows", "500", "--repeat", "1"], check=False, text=True,
                            capture_output=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["benchmark"] == "erasure" and set(report["seconds"]) == {
        "records only (store.delete)", "erase, dry run", "erase: records and dataset rows", "by text: records only",
        "by text: erase"}


def test_retiring_takes_the_adapters_that_learned_the_records_out_of_routes_then_off_disk(tmp_path):
    """`retire_adapters`: an alias whose student learned from an erased row goes back to its
    teacher, with that student gone from its rollback history (rollback reaches the clean
    student before it); a canary of one ends on the clean student; the files go last."""
    config = FlywheelConfig.model_validate({"home": str(tmp_path), "serve": {"models": [{"name": "small",
                                                                                          "source": "x"}]}})
    store = open_store(config.store_url)
    records = [LogRecord(workload_id="support", client_id=client, model="small", request={})
               for client in ("alice", "alice", "bob")]
    store.write_batch(records)
    version = write_dataset(config.datasets_dir, "support", {"train": [_example(r.id) for r in records], "val": [],
                                                             "eval": [], "icl": []}, {"prefix": None}, {}, [])
    for adapter_id, dataset_id in (("clean", "support-older"), ("tainted", version.dataset_id)):
        made = AdapterVersion(adapter_id=adapter_id, base_model="small", dataset_id=dataset_id, dataset_hash="h",
                              hyperparameters={}, metrics={}, path=config.adapters_dir / "small" / adapter_id)
        made.path.mkdir(parents=True)
        (made.path / "adapter_config.json").write_text("{}")
        made.save()
    (config.checkpoints_dir / "tainted").mkdir(parents=True)
    book = open_route_book(config)
    book.promote("support", "clean")
    book.promote("support", "tainted")
    book.promote("trial", "clean")
    book.set_mode("trial", "canary", percent=10, candidate="tainted")
    book.promote("moved-on", "tainted")
    book.promote("moved-on", "clean")  # the tainted student is its rollback target

    chosen = LogFilter(client_id="alice")
    counted = erase(config, store, chosen, dry_run=True, retire_adapters=True)
    assert (counted.adapters, counted.retired, counted.aliases) == (["tainted"], [], [])
    assert book.get("support").student == "small:tainted" and (config.adapters_dir / "small" / "tainted").is_dir()

    done = erase(config, store, chosen, retire_adapters=True)
    assert (done.adapters, done.retired, sorted(done.aliases)) == (["tainted"], ["tainted"], ["support", "trial"])
    support, trial = book.get("support"), book.get("trial")
    assert (support.mode, support.student, trial.mode, trial.student, trial.candidate) == \
        ("teacher", None, "student", "small:clean", None)
    assert "erased records" in support.reason and "alice" not in book.path.read_text()
    assert all("tainted" not in str(state) for states in book.table().history.values() for state in states)
    assert book.rollback("support").student == "small:clean"
    assert book.get("moved-on").student == "small:clean" and book.rollback("moved-on").mode == "teacher"
    assert [a.adapter_id for a in list_adapters(config.adapters_dir)] == ["clean"]
    assert not (config.checkpoints_dir / "tainted").exists() and not (config.adapters_dir / "small" / "tainted").exists()
    # a gate that decided just before the erasure, acting while the files were still there
    (config.adapters_dir / "small" / "tainted").mkdir(parents=True)
    (config.adapters_dir / "small" / "tainted" / "adapter_config.json").write_text("{}")
    for late in (lambda: book.promote("support", "tainted"),
                 lambda: book.set_mode("trial", "shadow", candidate="small:tainted")):
        with pytest.raises(RouteError, match="was retired") as refused:
            late()
        assert refused.value.status == 409
    assert book.get("support").student == "small:clean" and book.get("trial").candidate is None
    store.close()
