"""Trained adapters as versions: where they are, what made them, how good they were.

An adapter lives where the service loads adapters by name,
`<adapters_dir>/<base model>/<adapter id>/` (a PEFT folder vLLM serves as-is), with
`flywheel_adapter.json` beside the weights recording its `AdapterVersion`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from flywheel.file_state import replace_file

RECORD = "flywheel_adapter.json"


class AdapterVersion(BaseModel):
    adapter_id: str = Field(description="Served as `<base_model>:<adapter_id>`.")
    base_model: str
    workload_id: str | None = Field(None, description="The workload its dataset came from.")
    dataset_id: str
    dataset_hash: str
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any]
    path: Path
    prefix: dict[str, Any] | None = Field(
        None, description="The shared system prompt + tools its dataset pruned (flywheel/prefix.py): the "
        "service strips them from requests before they reach this adapter.")
    created_at: float = Field(default_factory=time.time)

    def save(self) -> None:
        replace_file(self.path / RECORD, self.model_dump_json(indent=2) + "\n")


def load_adapter(adapters_dir: Path, adapter_id: str) -> AdapterVersion:
    for record in Path(adapters_dir).glob(f"*/{adapter_id}/{RECORD}"):
        return AdapterVersion.model_validate(json.loads(record.read_text()))
    raise FileNotFoundError(f"no adapter {adapter_id!r} under {adapters_dir}")


def list_adapters(adapters_dir: Path) -> list[AdapterVersion]:
    """Every registered adapter, newest first."""
    found = []
    for record in Path(adapters_dir).glob(f"*/*/{RECORD}"):
        try:
            found.append(AdapterVersion.model_validate(json.loads(record.read_text())))
        except (OSError, ValueError) as error:  # one bad record (pydantic's errors are ValueErrors) must not hide the rest
            logging.getLogger(__name__).warning("skipping unreadable adapter record %s: %s", record, error)
    return sorted(found, key=lambda version: version.created_at, reverse=True)
