"""`flywheel demo --quick` end to end, as `make demo` runs it (smaller): its own Ray
cluster and service, two turns, live requests through the promoted alias, corrections,
the summary, the chart and the reports on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flywheel.service import free_port
from tests.integration.conftest import MODEL, REPO, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.own_cluster]


@pytest.mark.timeout(1800)
def test_quick_demo_turns_twice_and_the_promoted_alias_answers_with_the_student(tmp_path, models_dir):
    home = tmp_path / "demo-home"
    config = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    config["serve"]["port"] = free_port()
    config["ray"]["num_cpus"] = 8  # logical slots: Ray Data / Train tasks next to the engine on 2 cores
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(config))
    summary = run_cli("demo", "--quick", config=tmp_path / "demo.yaml", timeout=1700,
                      env={"FLYWHEEL_HOME": str(home), "FLYWHEEL_MODELS": str(models_dir)})

    first, second = summary["turns"]
    assert first["decision"]["promote"], first["decision"]["reasons"]  # quick: the gate checks regressions only
    assert {row["role"] for row in first["scores"].values()} == {"base", "icl", "new student", "teacher"}
    assert {row["role"] for row in second["scores"].values()} >= {"new student", "incumbent student", "teacher"}
    assert second["decision"]["reasons"] and second["decision"]["incumbent"] == first["decision"]["candidate"]
    assert all(seconds > 0 for turn in (first, second) for seconds in turn["stages"].values())

    held_out = summary["held_out"]
    assert held_out["sent"] == 4 and set(held_out["models"]) == {f"{MODEL}:{first['decision']['candidate']}"}
    routes = json.loads((home / "routes.json").read_text())["aliases"]["support-tools"]
    promoted = second["decision"]["candidate"] if second["decision"]["promote"] else first["decision"]["candidate"]
    assert routes["mode"] == "student" and routes["student"] == f"{MODEL}:{promoted}"

    assert json.loads((home / "demo_summary.json").read_text())["turns"][0]["run_id"] == first["run_id"]
    assert Path(summary["chart"]).stat().st_size > 10_000
    datasets = []
    for turn in (first, second):
        record = run_cli("runs", turn["run_id"], config=tmp_path / "demo.yaml", env={"FLYWHEEL_HOME": str(home)})
        assert (home / "reports" / record["stages"]["evaluate"]["artifacts"]["report_id"] / "report.json").is_file()
        datasets.append(home / "datasets" / "support-tools" / record["stages"]["curate"]["artifacts"]["dataset_id"])
    # turn 2 never evaluates on what turn 1's student trained on
    assert json.loads((datasets[1] / "manifest.json").read_text())["kept_out_of_eval"]["trained_on_by"] == [
        datasets[0].name]
    ids = [{json.loads(line)["id"] for line in (folder / f"{split}.jsonl").read_text().splitlines()}
           for folder, split in ((datasets[0], "train"), (datasets[1], "eval"))]
    assert ids[1] and not ids[0] & ids[1]
    cost = summary["cost"]  # measured from the logs: the held-out answers are the student's
    assert cost["student"]["requests"] == held_out["sent"] and cost["saved_usd"] > 0
    assert cost["student"]["tokens_per_request"] < cost["teacher"]["tokens_per_request"]
