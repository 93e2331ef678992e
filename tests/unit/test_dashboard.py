"""configs/grafana/flywheel.json and configs/prometheus/flywheel-alerts.yaml against
flywheel/telemetry.py: every metric the flywheel reports has a panel, under the name
Prometheus gives it, and no panel or alert queries a metric that does not exist. (The names as exported are checked against a live Ray metrics
endpoint in the integration tier, tests/integration/test_turn.py.)"""

import json
import re

import yaml

from tests.conftest import REPO

SUFFIX = {"Counter": "_total", "Gauge": "", "Histogram": "_bucket"}  # Ray prefixes `ray_`


def reported() -> set[str]:
    source = (REPO / "flywheel" / "telemetry.py").read_text()
    found = re.findall(r'_metric\(\s*"(\w+)",\s*"(flywheel_\w+)"', source)
    assert len(found) >= 10, found  # the pattern still matches how telemetry.py declares them
    return {f"ray_{name}{SUFFIX[kind]}" for kind, name in found}


def panels(items):
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def test_every_reported_metric_has_a_panel_and_every_panel_a_metric():
    dashboard = json.loads((REPO / "configs" / "grafana" / "flywheel.json").read_text())
    shown = list(panels(dashboard["panels"]))
    queries = [target["expr"] for panel in shown for target in panel.get("targets", [])]
    queried = {name for expr in queries for name in re.findall(r"ray_flywheel_\w+", expr)}
    assert queried == reported()
    assert len({panel["id"] for panel in shown}) == len(shown)
    boxes = [panel["gridPos"] for panel in shown]
    assert all(box["x"] + box["w"] <= 24 for box in boxes)
    cells = [(box["x"] + dx, box["y"] + dy) for box in boxes for dx in range(box["w"]) for dy in range(box["h"])]
    assert len(cells) == len(set(cells))  # no two panels overlap
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in shown if panel["type"] != "row")


def test_every_alert_queries_reported_metrics_and_says_what_to_do():
    rules = yaml.safe_load((REPO / "configs" / "prometheus" / "flywheel-alerts.yaml").read_text())
    (group,) = rules["groups"]
    alerts = group["rules"]
    assert len({rule["alert"] for rule in alerts}) == len(alerts) >= 5
    for rule in alerts:
        assert set(re.findall(r"ray_flywheel_\w+", rule["expr"])) <= reported(), rule["alert"]
        assert re.search(r"[<>]", rule["expr"]), rule["alert"]  # a condition, not a bare series
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    outcomes = set(re.findall(r'outcome="(\w+)"', " ".join(rule["expr"] for rule in alerts)))
    assert outcomes <= {"promoted", "withdrawn", "unchanged", "demoted"}
