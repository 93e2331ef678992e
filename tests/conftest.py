"""Shared fixtures. Tiers: unit (default), integration (`-m integration`), gpu."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def flywheel_home(tmp_path, monkeypatch) -> Path:
    """An isolated $FLYWHEEL_HOME: nothing a test writes escapes it."""
    home = tmp_path / "home"
    monkeypatch.setenv("FLYWHEEL_HOME", str(home))
    monkeypatch.delenv("FLYWHEEL_MODELS", raising=False)
    return home


@pytest.fixture(scope="session")
def search_server() -> str:
    """A real OpenSearch-compatible server (osmem-server, in memory) for the session."""
    from osmem_server import OsmemServer

    server = OsmemServer.start()
    yield server.url
    server.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer random Llama and its tokenizer, saved as a Hugging Face folder (unit/tiny_llama.py)."""
    from tests.unit import tiny_llama

    return tiny_llama.build(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def sft_dataset(tmp_path_factory) -> Path:
    """A dataset folder `flywheel.sft.run_sft` reads: 32 train and 8 val tool-call conversations
    (unit/tiny_llama.py), for the tiny model."""
    import json

    from tests.unit.tiny_llama import conversation

    path = tmp_path_factory.mktemp("sft-dataset")
    (path / "train.jsonl").write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(32)))
    (path / "val.jsonl").write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(100, 108)))
    return path
