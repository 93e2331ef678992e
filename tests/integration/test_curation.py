"""Generate -> import -> curate through Ray Data from SQLite, on the service's Ray cluster:
the CLI end to end (`flywheel workload generate`, `flywheel logs import`, `flywheel
curate --json`) and `jobs/curate.py`, determinism, PII and the clear messages for unusable workloads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from flywheel.config import load_config
from flywheel.curation import CurationError, curate_workload
from flywheel.records import record_from_json
from flywheel.store import open_store
from flywheel.workloads.support_tools import TEACHER, generate
from tests.integration.conftest import REPO, run_cli

pytestmark = pytest.mark.integration
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


@pytest.fixture(scope="module")
def curation_home(tmp_path_factory, service, ray_cluster):
    """A home whose config joins the service's Ray cluster and names the teacher."""
    home = tmp_path_factory.mktemp("curation-home")
    config = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    config.update(home=str(home), ray={"address": ray_cluster},
                  curate={"teacher_models": [TEACHER], "eval_size": 60, "icl": {"pool_size": 300}})
    (home / "config.yaml").write_text(yaml.safe_dump(config))
    return home


def test_generate_import_curate_end_to_end(curation_home):
    logs = curation_home / "support.jsonl"
    generated = subprocess.run([sys.executable, "-m", "flywheel.cli", "workload", "generate", "support-tools",
                                "--n", "1500", "--seed", "11", "--out", str(logs), "--json"],
                               check=False, capture_output=True, text=True, timeout=120)
    assert generated.returncode == 0, generated.stderr
    imported = run_cli("logs", "import", str(logs), config=curation_home / "config.yaml")
    assert imported["imported"] == 1500 and imported["bad"] == 0
    first = run_cli("curate", "--workload", "support-tools", config=curation_home / "config.yaml")
    assert first["dataset_id"].startswith("support-tools-") and len(first["content_hash"]) == 64
    counts = first["counts"]
    assert counts["logged"] == 1500 > counts["ok"] > counts["after_not_teacher"] > counts["after_dedup"]
    assert counts["after_negative_feedback"] < counts["after_not_teacher"]
    assert counts["eval"] == 60 and counts["train"] + counts["val"] + counts["eval"] == counts["after_dedup"]

    folder = curation_home / "datasets" / "support-tools" / first["dataset_id"]
    assert folder.as_posix() == first["path"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["workload_type"] == "tool_calling" and manifest["pii"]["EMAIL"] > 0
    assert manifest["prefix"] and len(manifest["prefix"]["tools"]) == 10
    assert manifest["sources"]["correction"] > 0  # reviewers' corrections replaced wrong answers
    train = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert all(m["role"] != "system" for example in train for m in example["messages"])  # prefix pruned
    evals = [json.loads(line) for line in (folder / "eval.jsonl").read_text().splitlines()]
    assert evals[0]["tools"] and evals[0]["messages"][0]["role"] == "system"  # eval keeps the full prompt
    assert sum(bool(e["icl_ids"]) for e in evals) == len(evals)  # semantic ICL picks per eval record
    text = "".join((folder / f"{split}.jsonl").read_text() for split in ("train", "val", "eval", "icl"))
    assert not EMAIL.search(text) and re.search(r"ORD-\d{6}", text)  # PII gone, order ids intact
    assert set(manifest["labels"]["eval"]) == set(manifest["labels"]["train"])  # stratified

    again = run_cli("curate", "--workload", "support-tools", config=curation_home / "config.yaml")  # same version
    assert again["content_hash"] == first["content_hash"] and again["dataset_id"] == first["dataset_id"]
    job = subprocess.run([sys.executable, str(REPO / "jobs" / "curate.py"), "--config",
                          str(curation_home / "config.yaml"), "--workload", "support-tools"], check=False,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert job.returncode == 0, job.stderr[-2000:]
    assert json.loads(job.stdout.strip().splitlines()[-1])["dataset_id"] == first["dataset_id"]  # the Ray job entry


def test_unusable_workloads_get_clear_messages(curation_home):
    config = load_config(curation_home / "config.yaml", {"curate.icl.semantic": False})
    store = open_store(config.store_url)
    try:
        with pytest.raises(CurationError, match="no records for workload 'nothing-here'"):
            curate_workload(config, store, "nothing-here")
        one = next(item for item in generate(50, seed=5) if item.get("response") and not item.get("feedback"))
        copies = [record_from_json({**one, "workload_id": "dupes", "timestamp": one["timestamp"] + i})
                  for i in range(30)]
        store.write_batch(copies)
        with pytest.raises(CurationError, match=r"'dupes' has 1 usable record\(s\).*after_dedup 1"):
            curate_workload(config, store, "dupes")
        single = [record_from_json({**one, "workload_id": "one-label", "timestamp": one["timestamp"] + i,
                                    "request": {**one["request"], "messages": [
                                        *one["request"]["messages"][:-1], {"role": "user", "content": f"q {i}"}]}})
                  for i in range(30)]
        store.write_batch(single)
        version = curate_workload(config, store, "one-label")
        assert any("not stratified" in message for message in version.messages)
    finally:
        store.close()
