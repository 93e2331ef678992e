
import pytest
import yaml

from flywheel.config import ConfigError, FlywheelConfig, load_config, parse_config
from tests.conftest import REPO

MINIMAL = {"serve": {"models": [{"name": "m", "source": "smollm2-135m-instruct"}]}}


def test_shipped_local_config_is_valid(flywheel_home):
    cfg = load_config(REPO / "configs" / "local.yaml")
    assert cfg.serve.models[0].name == "smollm2-135m-instruct"
    assert cfg.serve.aliases["support-router"].base == "smollm2-135m-instruct"
    assert cfg.home == flywheel_home.resolve()
    assert cfg.models_dir == flywheel_home.resolve() / "models"


def test_shipped_serve_config_points_at_a_valid_flywheel_config(flywheel_home):
    serve_cfg = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())
    (application,) = serve_cfg["applications"]
    assert application["import_path"] == "serve.app:app_builder"
    load_config(REPO / application["args"]["config"])


def test_models_dir_follows_flywheel_models(flywheel_home, monkeypatch, tmp_path):
    monkeypatch.setenv("FLYWHEEL_MODELS", str(tmp_path / "shared-models"))
    assert parse_config(MINIMAL).models_dir == (tmp_path / "shared-models").resolve()
    assert parse_config(MINIMAL).adapters_dir == flywheel_home.resolve() / "adapters"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"serve": {"models": []}}, "serve.models"),
        ({"serve": {"port": 70000, "models": MINIMAL["serve"]["models"]}}, "serve.port"),
        ({"serve": {"models": [{"name": "a:b", "source": "x"}]}}, "serve.models.0.name"),
        ({"serve": {"models": [{"name": "m", "source": "x", "max_model_len": 0}]}},
         "serve.models.0.max_model_len"),
        ({"serve": {"models": [{"name": "m", "source": "x", "dtype": "int3"}]}}, "serve.models.0.dtype"),
        ({"serve": {"models": [{"name": "m", "source": "x", "typo_field": 1}]}},
         "serve.models.0.typo_field"),
        ({"serve": {"models": MINIMAL["serve"]["models"], "aliases": {"r": {"base": "ghost"}}}},
         "aliases.r.base"),
        ({**MINIMAL, "turn": {"per_workload": {"support desk": {"min_new_records": 5}}}},
         "turn.per_workload.support desk.[key]"),
        ({**MINIMAL, "turn": {"workloads": ["ok", "../x"]}}, "turn.workloads.1"),
        ({"serve": {**MINIMAL["serve"], "logging": {"default_workload": "x" * 101}}},
         "serve.logging.default_workload"),
    ],
)
def test_invalid_config_is_one_line_naming_the_field(patch, field):
    with pytest.raises(ConfigError) as raised:
        parse_config(patch, origin="my.yaml")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("my.yaml: ")
    assert field in message


def test_duplicate_model_names_are_refused():
    twice = {"serve": {"models": [{"name": "m", "source": "a"}, {"name": "m", "source": "b"}]}}
    with pytest.raises(ConfigError, match="unique"):
        parse_config(twice)


def test_overrides_replace_dotted_fields(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    cfg = load_config(path, {"serve.port": 9123, "serve.host": None})
    assert cfg.serve.port == 9123
    assert cfg.serve.host == "127.0.0.1"  # None means "not given"


def test_missing_and_malformed_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("serve: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_every_field_is_documented():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            annotation = field.annotation
            for inner in getattr(annotation, "__args__", ()) + (annotation,):
                if isinstance(inner, type) and hasattr(inner, "model_fields"):
                    walk(inner)

    walk(FlywheelConfig)


def test_readme_configuration_reference_names_every_field():
    def paths(model, prefix=""):
        import typing

        for name, field in model.model_fields.items():
            annotation = field.annotation
            nested = [a for a in typing.get_args(annotation) + (annotation,)
                      if isinstance(a, type) and hasattr(a, "model_fields")]
            if nested and name != "aliases":
                suffix = "[]" if typing.get_origin(annotation) is list else ""
                yield from paths(nested[0], f"{prefix}{name}{suffix}.")
            else:
                yield f"{prefix}{name}"

    readme = (REPO / "README.md").read_text()
    missing = [path for path in paths(FlywheelConfig) if f"| `{path}` |" not in readme]
    assert not missing, f"README configuration reference lacks {missing}"


def test_the_cli_prints_an_alias_and_a_workload_with_their_overlays_merged(tmp_path):
    import json
    import subprocess
    import sys

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "gate": {"min_teacher_ratio": 0.9, "per_alias": {"billing": {
        "min_teacher_ratio": 0.98}}}, "turn": {"per_workload": {"chat": {"min_new_records": 5000}}}}))

    def shown(*args):
        result = subprocess.run([sys.executable, "-m", "flywheel.cli", "config", "--config", str(path), "--json",
                                 *args], check=False, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    plain, merged = shown(), shown("--alias", "billing", "--workload", "chat")
    assert plain["gate"]["min_teacher_ratio"] == 0.9 and plain["turn"]["min_new_records"] == 500
    assert merged["gate"]["min_teacher_ratio"] == 0.98 and merged["turn"]["min_new_records"] == 5000
    assert shown("--alias", "support")["gate"]["min_teacher_ratio"] == 0.9  # no overlay: the defaults
