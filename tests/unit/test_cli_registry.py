"""`flywheel datasets` and `flywheel adapters` as a user runs them (subprocess, --json last
line): what has been curated and trained, newest first, and which aliases use each adapter."""

import json
import time

from flywheel.adapters import AdapterVersion
from flywheel.config import load_config
from flywheel.datasets import write_dataset
from tests.unit.test_cli_logs import flywheel, last_json
from tests.unit.test_curation_steps import REPO_CONFIG

MESSAGES = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])


def _dataset(root, workload, rows, created):
    examples = [{"id": f"{workload}-{i}", "label": "a", "source": "teacher", "tools": "[]", "messages": MESSAGES}
                for i in range(rows)]
    return write_dataset(root, workload, {"train": examples[1:], "val": [], "icl": [],
                                          "eval": [{**examples[0], "icl_ids": []}]},
                         {"prefix": None, "created_at": created, "workload_type": "generic",
                          "kept_out_of_eval": {"trained_on_by": [], "rows": 0}}, {"train": rows - 1, "eval": 1}, [])


def test_datasets_and_adapters_are_listed_newest_first_with_their_use(tmp_path):
    home = tmp_path / "home"
    assert "no datasets" in flywheel("datasets", home=home).stdout
    assert last_json(flywheel("adapters", "--json", home=home)) == {"adapters": []}
    config = load_config(REPO_CONFIG, {"home": str(home)})
    old = _dataset(config.datasets_dir, "support", 3, time.time() - 60)
    new = _dataset(config.datasets_dir, "support", 5, time.time())
    other = _dataset(config.datasets_dir, "billing", 4, time.time() - 30)
    listed = last_json(flywheel("datasets", "--json", home=home))["datasets"]
    assert [d["dataset_id"] for d in listed] == [new.dataset_id, other.dataset_id, old.dataset_id]
    assert listed[0]["counts"]["train"] == 4 and listed[0]["path"] == str(new.path)
    mine = last_json(flywheel("datasets", "--workload", "support", "--json", home=home))["datasets"]
    assert [d["dataset_id"] for d in mine] == [new.dataset_id, old.dataset_id]
    assert new.dataset_id in flywheel("datasets", home=home, columns=250).stdout

    base = config.default_base
    for index, (name, dataset) in enumerate((("first", old), ("second", new), ("billing-1", other))):
        path = config.adapters_dir / base / name
        path.mkdir(parents=True)
        (path / "adapter_config.json").write_text("{}")
        AdapterVersion(adapter_id=name, base_model=base, workload_id=dataset.workload_id,
                       dataset_id=dataset.dataset_id, dataset_hash=dataset.content_hash, hyperparameters={},
                       metrics={"step": 10 * (index + 1), "loss": 0.5, "val_loss": 0.25}, path=path,
                       created_at=time.time() - 60 + index).save()
    assert flywheel("promote", "--adapter", "first", "--alias", "support", home=home).returncode == 0
    assert flywheel("traffic", "--alias", "support", "--mode", "shadow", "--candidate", "second",
                    home=home).returncode == 0
    adapters = last_json(flywheel("adapters", "--workload", "support", "--json", home=home))["adapters"]
    assert [(a["adapter_id"], a["dataset_id"]) for a in adapters] == [("second", new.dataset_id),
                                                                      ("first", old.dataset_id)]
    assert adapters[0]["used_by"] == ["support: shadow candidate"]
    assert adapters[1]["used_by"] == ["support: student (alias in shadow mode)"]
    broken = config.adapters_dir / base / "half-written"
    broken.mkdir()
    (broken / "flywheel_adapter.json").write_text('{"adapter_id": "half-wr')
    listed = flywheel("adapters", "--json", home=home)
    assert len(last_json(listed)["adapters"]) == 3 and "skipping unreadable adapter record" in listed.stderr
    table = flywheel("adapters", home=home, columns=250).stdout
    assert f"{base}:billing-1" in table and "0.250" in table and "support: shadow candidate" in table
