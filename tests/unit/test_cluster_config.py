"""The shipped cluster launcher config passes Ray's own schema, and every flywheel config
in configs/ validates."""

from pathlib import Path

import pytest
import yaml

from flywheel.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_cluster_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # raises jsonschema.ValidationError / ValueError
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"].get("GPU", 0) == 0  # a CPU head
    assert all(node["resources"]["GPU"] >= 1 for name, node in nodes.items() if name != config["head_node_type"])
    assert any(".[gpu" in command for command in config["setup_commands"])


def test_a_broken_cluster_yaml_is_refused():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["max_workers"] = "many"
    with pytest.raises((jsonschema.ValidationError, ValueError, TypeError)):
        validate_config(prepare_config(config))


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_flywheel_config_validates(path):
    if "import_path" in yaml.safe_load(path.read_text()).get("applications", [{}])[0]:
        pytest.skip("a Serve config (tests/unit/test_config.py checks it)")
    config = load_config(path)
    assert config.serve.models
