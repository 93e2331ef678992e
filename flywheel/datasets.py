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
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.parquet
from pydantic import BaseModel, Field

from flywheel.file_state import replace_file

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


def _content_hash(encoded: dict[str, bytes], prefix: dict[str, Any] | None) -> str:
    digest = hashlib.sha256()
    for name in SPLITS:
        digest.update(name.encode() + b"\x00" + encoded[name])
    digest.update(json.dumps(prefix, sort_keys=True).encode())
    return digest.hexdigest()


def _parquet(rows: list[dict[str, Any]], split: str) -> bytes:
    sink = pyarrow.BufferOutputStream()
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows, schema=_parquet_schema(split)), sink)
    return sink.getvalue().to_pybytes()


def write_dataset(root: Path, workload_id: str, splits: dict[str, list[dict[str, Any]]],
                  manifest: dict[str, Any], counts: dict[str, int], messages: list[str]) -> DatasetVersion:
    """Write the folder atomically (temp dir + rename); an identical version is kept as is.
    Rows: `id`, `label`, `source`, `messages` and `tools` as JSON text, `icl_ids` on eval."""
    ordered = {name: sorted(splits[name], key=lambda row: row["id"]) for name in SPLITS}
    encoded = {name: _jsonl(rows) for name, rows in ordered.items()}
    content_hash = _content_hash(encoded, manifest.get("prefix"))
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
            (staging / f"{name}.parquet").write_bytes(_parquet(ordered[name], name))
        full = {"dataset_id": dataset_id, "workload_id": workload_id, "content_hash": content_hash,
                "counts": counts, "messages": messages, **manifest}
        (staging / "manifest.json").write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version


def row_ids(path: Path) -> dict[str, list[str]]:
    """The row ids of each split of the version at `path` (the log records they came from)."""
    return {name: pyarrow.parquet.read_table(path / f"{name}.parquet", columns=["id"])["id"].to_pylist()
            for name in SPLITS}


def remove_rows(path: Path, ids: set[str], dry_run: bool = False) -> dict[str, int]:
    """Drop the rows whose ids are in `ids` from the version at `path` (an erasure): from
    every split's JSONL and Parquet, from eval rows' in-context picks, and from the manifest's
    counts and labels; the content hash is recomputed and the erasure noted in the manifest.
    The folder keeps its name, so the turns, reports and adapters that name it still find it.
    Each file is replaced whole, the manifest last: a crash leaves some splits done and a rerun
    finishes them. Rows removed (with `dry_run`, that would be) per split."""
    hits = {name: len(ids.intersection(ids_in)) for name, ids_in in row_ids(path).items()}
    if dry_run or not any(hits.values()):
        return hits
    splits = {name: [row for row in pyarrow.parquet.read_table(path / f"{name}.parquet").to_pylist()
                     if row["id"] not in ids] for name in SPLITS}
    for row in splits["eval"]:
        if row["icl_ids"] is None:  # written without picks: Parquet's null, no key in the JSONL
            del row["icl_ids"]
        else:
            row["icl_ids"] = [pick for pick in row["icl_ids"] if pick not in ids]
    encoded = {name: _jsonl(rows) for name, rows in splits.items()}
    for name in SPLITS:
        replace_file(path / f"{name}.jsonl", encoded[name])
        replace_file(path / f"{name}.parquet", _parquet(splits[name], name))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["counts"].update({name: len(rows) for name, rows in splits.items()})
    manifest["labels"] = {name: dict(sorted(Counter(row["label"] for row in rows).items()))
                          for name, rows in splits.items()}
    manifest["sources"] = dict(sorted(Counter(row["source"] for row in splits["train"]).items()))
    manifest["content_hash"] = _content_hash(encoded, manifest.get("prefix"))
    manifest.setdefault("erasures", []).append({"at": time.time(), "rows": hits})
    replace_file(path / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return hits


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
