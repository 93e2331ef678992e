"""Pruning turns' leftovers (`flywheel/prune.py`, `flywheel prune`, the watcher's hourly
pass) on a home laid out as turns leave it: dataset versions, adapters, checkpoints, routes."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flywheel.adapters import AdapterVersion, list_adapters
from flywheel.config import RouteTarget, load_config
from flywheel.datasets import list_datasets, write_dataset
from flywheel.prune import prune_workload, requested_adapters
from flywheel.records import LogRecord
from flywheel.routes import open_route_book
from flywheel.store import open_store
from flywheel.turns import RunBook
from flywheel.watch import Watcher

REPO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "local.yaml"
BASE = "smollm2-135m-instruct"


@pytest.fixture
def home(tmp_path):
    """Five turns of `support` (two candidates each: `t<turn>-a`, `t<turn>-b`) and one of
    `billing`; the alias was promoted to t0-a, then t1-a (t0-a is now a rollback target)."""
    config = load_config(REPO_CONFIG, {"home": str(tmp_path)})
    messages = json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    made = {}
    for turn, workload in [(0, "support"), (1, "support"), (2, "support"), (3, "support"), (4, "support"),
                           (5, "billing")]:
        rows = [{"id": f"r{turn}-{i}", "label": "a", "source": "teacher", "tools": "[]", "messages": messages}
                for i in range(50)]
        dataset = write_dataset(config.datasets_dir, workload, {"train": rows, "val": [], "eval": [], "icl": []},
                                {"prefix": None, "created_at": 1000.0 + turn}, {"train": 50}, [])
        made[turn] = dataset.dataset_id
        for candidate in "ab":
            adapter_id = f"t{turn}-{candidate}"
            version = AdapterVersion(adapter_id=adapter_id, base_model=BASE, workload_id=workload,
                                     dataset_id=dataset.dataset_id, dataset_hash=dataset.content_hash,
                                     hyperparameters={}, metrics={}, path=config.adapters_dir / BASE / adapter_id,
                                     created_at=1000.0 + turn)
            version.path.mkdir(parents=True)
            (version.path / "adapter_config.json").write_text("{}")
            (version.path / "adapter_model.safetensors").write_bytes(b"w" * 4096)
            version.save()
            checkpoint = config.checkpoints_dir / adapter_id / "checkpoint_000001"
            checkpoint.mkdir(parents=True)
            (checkpoint / "optimizer.pt").write_bytes(b"o" * 8192)
    unfinished = config.checkpoints_dir / "t6-a" / "checkpoint_000001"  # a training that stopped part-way
    unfinished.mkdir(parents=True)
    (unfinished / "optimizer.pt").write_bytes(b"o" * 8192)
    book = open_route_book(config)
    book.promote("support-router", "t0-a")
    book.promote("support-router", "t1-a")
    return config, made


def test_keeps_the_newest_versions_and_whatever_an_alias_can_route_to(home):
    config, made = home
    def files():
        return {path for path in config.home.rglob("*") if path.is_file() and path.suffix != ".lock"}

    store = open_store(config.store_url)  # a client that asks for an adapter by name keeps it
    now = time.time()
    store.write_batch([LogRecord(workload_id="support", client_id="c", model=f"{BASE}:{adapter}", request={},
                                 timestamp=now - age_days * 86400) for adapter, age_days in [("t2-a", 6), ("t1-b", 8)]])
    assert requested_adapters(store, now) == {"t2-a"}  # t1-b was asked for too long ago
    store.close()
    assert prune_workload(config, "support", keep=2, dry_run=True, requested={"t2-a"}).adapters == ["t2-b", "t1-b",
                                                                                                     "t0-b"]
    before = files()
    pinned = config.model_copy(update={"serve": config.serve.model_copy(update={"aliases": {
        **config.serve.aliases, "pinned": RouteTarget(base=BASE, adapter="t2-b")}})})
    assert prune_workload(pinned, "support", keep=2, dry_run=True).adapters == ["t2-a", "t1-b", "t0-b"]
    dry = prune_workload(config, "support", keep=2, dry_run=True)
    assert files() == before  # a dry run removes nothing
    assert dry.datasets == [made[2]]  # 3 and 4 are the newest; 0 and 1 trained what the alias names
    assert sorted(dry.adapters) == ["t0-b", "t1-b", "t2-a", "t2-b"]
    assert sorted(dry.checkpoints) == sorted(f"t{turn}-{c}" for turn in range(5) for c in "ab")
    going = [config.adapters_dir / BASE / name for name in ("t0-b", "t1-b", "t2-a", "t2-b")]
    going += [config.datasets_dir / "support" / made[2]]
    going += [config.checkpoints_dir / f"t{turn}-{c}" for turn in range(5) for c in "ab"]
    assert dry.bytes == sum(path.stat().st_size for path in before if any(folder in path.parents for folder in going))

    done = prune_workload(config, "support", keep=2)
    assert done.model_dump(exclude={"bytes"}) == dry.model_dump(exclude={"bytes"}) and done.bytes == dry.bytes
    assert [v["dataset_id"] for v in list_datasets(config.datasets_dir, "support")] == [made[4], made[3], made[1],
                                                                                         made[0]]
    assert sorted(a.adapter_id for a in list_adapters(config.adapters_dir)) == [
        "t0-a", "t1-a", "t3-a", "t3-b", "t4-a", "t4-b", "t5-a", "t5-b"]
    assert not (config.adapters_dir / BASE / "t2-a").exists() and (config.adapters_dir / BASE / "t3-a").is_dir()
    assert sorted(p.name for p in (config.checkpoints_dir).iterdir()) == ["t5-a", "t5-b", "t6-a"]
    again = prune_workload(config, "support", keep=2)
    assert (again.datasets, again.adapters, again.checkpoints, again.bytes) == ([], [], [], 0)
    book = open_route_book(config)
    assert book.rollback("support-router").student == f"{BASE}:t0-a"  # its rollback target is still there
    after = prune_workload(config, "support", keep=2)  # and now nothing routes to t1-a
    assert (after.datasets, after.adapters) == ([made[1]], ["t1-a"])
    with pytest.raises(ValueError, match="keep >= 1"):
        prune_workload(config, "support", keep=0)


def test_a_running_turn_keeps_its_workload_untouched_and_the_cli_and_watcher_prune_every_workload(home, tmp_path):
    config, made = home
    with RunBook(config.turns_dir).workload_idle("support"):
        busy = prune_workload(config, "support", keep=1)
    assert busy.skipped == "a turn of workload 'support' is running" and busy.bytes == 0
    assert len(list_datasets(config.datasets_dir, "support")) == 5

    cli = subprocess.run([sys.executable, "-m", "flywheel.cli", "prune", "--keep", "1", "--json"], check=False,
                         capture_output=True, text=True, timeout=120,
                         env={"FLYWHEEL_HOME": str(config.home), "PATH": "/usr/bin:/bin"})
    shown = json.loads(cli.stdout.strip().splitlines()[-1])
    assert cli.returncode == 0 and shown["dry_run"] and shown["keep"] == 1, cli.stderr
    assert {w["workload"]: sorted(w["adapters"]) for w in shown["workloads"]} == {
        "billing": [], "support": ["t0-b", "t1-b", "t2-a", "t2-b", "t3-a", "t3-b"]}
    assert len(list_datasets(config.datasets_dir)) == 6

    kept = config.model_copy(update={"turn": config.turn.model_copy(update={"keep_versions": 1})})
    store = open_store(kept.store_url)
    watcher = Watcher(kept, store, lambda *args: pytest.fail("no turn is due"))
    watcher.retain(time.time())
    store.close()
    assert [v["dataset_id"] for v in list_datasets(config.datasets_dir)] == [made[5], made[4], made[1], made[0]]
    assert shown["bytes"] > 0 and not (config.checkpoints_dir / "t5-a").exists()
