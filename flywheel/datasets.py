"""Versioned dataset folders: `<datasets_dir>/<workload>/<dataset id>/` with train / val /
eval / icl as JSONL and Parquet (columns `id`, `label`, `source`, `messages` and `tools`
as OpenAI chat JSON text, `icl_ids` on eval) and `manifest.json`.

The content hash covers the JSONL bytes of every split (rows sorted by id) and the
pruned prefix, so the same inputs and seed give the same hash, and the dataset
id is derived from it: curating again with nothing new returns the same version.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.parquet
from pydantic import BaseModel, Field

SPLITS = ("train", "val", "eval", "icl")


class DatasetVersion(BaseModel):
    """What `curate_workload` returns and `flywheel curate --json` prints."""

    dataset_id: str = Field(description="`<workload>-<first 10 hex of content_hash>`.")
    workload_id: str
    path: Path
    content_hash: str = Field(description="sha256 over the splits' JSONL and the pruned prefix.")
    counts: dict[str, int] = Field(description="Records left after every step, then rows per split.")
    messages: list[str] = Field(default_factory=list, description="Things the user should know.")

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / "manifest.json").read_text())

    def rows(self, split: str) -> list[dict[str, Any]]:
        with open(self.path / f"{split}.jsonl", encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    """One chat example per line; `messages` and `tools` are spliced in as the JSON text they
    already are (re-encoding a million examples would cost more than curating them)."""
    lines = []
    for row in rows:
        head = json.dumps({"id": row["id"], "label": row["label"], "source": row["source"]}, ensure_ascii=False)
        tail = f', "icl_ids": {json.dumps(row["icl_ids"])}' if "icl_ids" in row else ""
        lines.append(f'{head[:-1]}, "messages": {row["messages"]}, "tools": {row["tools"]}{tail}}}\n')
    return "".join(lines).encode()


def write_dataset(root: Path, workload_id: str, splits: dict[str, list[dict[str, Any]]],
                  manifest: dict[str, Any], counts: dict[str, int], messages: list[str]) -> DatasetVersion:
    """Write the folder atomically (temp dir + rename); an identical version is kept as is.
    Rows: `id`, `label`, `source`, `messages` and `tools` as JSON text, `icl_ids` on eval."""
    encoded = {name: _jsonl(sorted(splits[name], key=lambda row: row["id"])) for name in SPLITS}
    digest = hashlib.sha256()
    for name in SPLITS:
        digest.update(name.encode() + b"\x00" + encoded[name])
    digest.update(json.dumps(manifest.get("prefix"), sort_keys=True).encode())
    content_hash = digest.hexdigest()
    dataset_id = f"{workload_id}-{content_hash[:10]}"
    path = root / workload_id / dataset_id
    version = DatasetVersion(dataset_id=dataset_id, workload_id=workload_id, path=path,
                             content_hash=content_hash, counts=counts, messages=messages)
    if (path / "manifest.json").is_file():
        return version
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dataset_id}-", dir=path.parent))
    try:
        for name in SPLITS:
            (staging / f"{name}.jsonl").write_bytes(encoded[name])
            rows = sorted(splits[name], key=lambda row: row["id"])
            table = pyarrow.Table.from_pylist(rows, schema=_parquet_schema(name))
            pyarrow.parquet.write_table(table, staging / f"{name}.parquet")
        full = {"dataset_id": dataset_id, "workload_id": workload_id, "content_hash": content_hash,
                "counts": counts, "messages": messages, **manifest}
        (staging / "manifest.json").write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version


def _parquet_schema(split: str) -> pyarrow.Schema:
    fields = [("id", pyarrow.string()), ("label", pyarrow.string()), ("source", pyarrow.string()),
              ("messages", pyarrow.string()), ("tools", pyarrow.string())]
    if split == "eval":
        fields.append(("icl_ids", pyarrow.list_(pyarrow.string())))
    return pyarrow.schema(fields)


def load_dataset(root: Path, dataset_id: str) -> DatasetVersion:
    """A written version by id (searched under every workload)."""
    for manifest in root.glob(f"*/{dataset_id}/manifest.json"):
        data = json.loads(manifest.read_text())
        return DatasetVersion(dataset_id=dataset_id, workload_id=data["workload_id"], path=manifest.parent,
                              content_hash=data["content_hash"], counts=data["counts"],
                              messages=data.get("messages", []))
    raise FileNotFoundError(f"no dataset {dataset_id!r} under {root}")


def list_datasets(root: Path, workload_id: str | None = None) -> list[dict[str, Any]]:
    """The manifest of every written version (of `workload_id`, when given), with its
    `path`, newest first."""
    found = []
    for manifest in Path(root).glob(f"{workload_id or '*'}/*/manifest.json"):
        found.append({**json.loads(manifest.read_text()), "path": str(manifest.parent)})
    return sorted(found, key=lambda manifest: manifest.get("created_at", 0), reverse=True)


def trained_rows(root: Path, workload_id: str, dataset_ids: set[str]) -> tuple[set[str], list[str]]:
    """The record ids an adapter learned from in each of the workload's `dataset_ids` still on
    disk: its train split, and its val split, which decided when its training stopped early.
    Also which of those versions were found (the rest were deleted, or belong to another
    workload)."""
    rows, found = set(), []
    for dataset_id in sorted(dataset_ids):
        splits = [root / workload_id / dataset_id / f"{split}.parquet" for split in ("train", "val")]
        if not splits[0].is_file():
            continue
        for path in filter(Path.is_file, splits):
            rows.update(pyarrow.parquet.read_table(path, columns=["id"])["id"].to_pylist())
        found.append(dataset_id)
    return rows, found
