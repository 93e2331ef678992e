import json

import pytest

from flywheel.config import RouteTarget
from serve.routing import Route, RoutingTable, UnknownModel


def make_adapter(root, base, name):
    folder = root / base / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    return folder


@pytest.fixture
def table(tmp_path):
    make_adapter(tmp_path, "small", "support-v1")
    aliases = {"router": RouteTarget(base="small", adapter="support-v1"), "plain": RouteTarget(base="small")}
    return RoutingTable(["small", "big"], aliases, tmp_path)


def test_base_adapter_and_alias_resolve(table):
    assert table.resolve("small") == Route("small", None)
    assert table.resolve("small:support-v1") == Route("small", "support-v1")
    assert table.resolve("router") == Route("small", "support-v1")
    assert table.resolve("router").name == "small:support-v1"
    assert table.resolve("plain").name == "small"


@pytest.mark.parametrize("name", ["ghost", "big:support-v1", "small:nope", "small:", "small:../small/support-v1"])
def test_unknown_names_are_refused(table, name):
    with pytest.raises(UnknownModel):
        table.resolve(name)


def test_new_adapter_folder_is_routable_without_rebuilding(table, tmp_path):
    with pytest.raises(UnknownModel):
        table.resolve("big:fresh")
    make_adapter(tmp_path, "big", "fresh")
    assert table.resolve("big:fresh") == Route("big", "fresh")


def test_folder_without_adapter_config_is_not_an_adapter(table, tmp_path):
    (tmp_path / "small" / "half-written").mkdir()
    with pytest.raises(UnknownModel):
        table.resolve("small:half-written")


def test_list_models_names_bases_adapters_and_aliases(table):
    rows = {row["id"]: row for row in table.list_models()}
    assert set(rows) == {"small", "small:support-v1", "big", "plain", "router"}
    assert rows["small:support-v1"]["parent"] == "small"
    assert rows["router"]["parent"] == "small:support-v1"
    assert all(row["object"] == "model" for row in rows.values())
