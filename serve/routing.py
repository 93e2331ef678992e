"""Which base model and adapter answer a request's `model` field.

A name is a base (`smollm2`), `base:adapter` (`smollm2:support-v3`), or an alias from
the routing table (`support-router`). Adapters are folders
`<adapters_dir>/<base>/<adapter>/` holding a PEFT `adapter_config.json`; a new folder
is routable at once, with no restart. The table here is static (config); [S6] makes
aliases movable at run time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from flywheel.config import MODEL_NAME, RouteTarget


class UnknownModel(LookupError):
    """The requested model, adapter or alias does not exist (HTTP 404)."""


@dataclass(frozen=True)
class Route:
    base: str
    adapter: str | None = None

    @property
    def name(self) -> str:
        """How responses name what answered: `base` or `base:adapter`."""
        return f"{self.base}:{self.adapter}" if self.adapter else self.base


class RoutingTable:
    def __init__(self, bases: list[str], aliases: dict[str, RouteTarget], adapters_dir: Path):
        self.bases = list(bases)
        self.aliases = dict(aliases)
        self.adapters_dir = adapters_dir

    def adapter_path(self, base: str, adapter: str) -> Path:
        return self.adapters_dir / base / adapter

    def has_adapter(self, base: str, adapter: str) -> bool:
        # The name check keeps `base:../../x` from reaching outside the adapters directory.
        return bool(MODEL_NAME.match(adapter)) and (
            self.adapter_path(base, adapter) / "adapter_config.json"
        ).is_file()

    def resolve(self, model: str) -> Route:
        if model in self.aliases:
            target = self.aliases[model]
            return self._checked(target.base, target.adapter, via=f"alias {model!r}")
        base, sep, adapter = model.partition(":")
        return self._checked(base, adapter if sep else None, via=None)

    def _checked(self, base: str, adapter: str | None, via: str | None) -> Route:
        prefix = f"{via} points at " if via else ""
        if base not in self.bases:
            served = ", ".join(self.bases + sorted(self.aliases))
            raise UnknownModel(f"{prefix}model {base!r} does not exist; served: {served}")
        if adapter is not None and not self.has_adapter(base, adapter):
            raise UnknownModel(
                f"{prefix}adapter {adapter!r} does not exist for model {base!r} "
                f"(no {self.adapter_path(base, adapter)}/adapter_config.json)"
            )
        return Route(base, adapter)

    def adapters(self, base: str) -> list[str]:
        folder = self.adapters_dir / base
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if self.has_adapter(base, p.name))

    def list_models(self) -> list[dict]:
        """OpenAI `/v1/models` entries: bases, then `base:adapter`s, then aliases."""
        created = int(time.time())
        rows = []
        for base in self.bases:
            rows.append({"id": base, "object": "model", "created": created, "owned_by": "flywheel",
                         "root": base, "parent": None})
            for adapter in self.adapters(base):
                rows.append({"id": f"{base}:{adapter}", "object": "model", "created": created,
                             "owned_by": "flywheel", "root": base, "parent": base})
        for alias, target in sorted(self.aliases.items()):
            route = Route(target.base, target.adapter)
            rows.append({"id": alias, "object": "model", "created": created, "owned_by": "flywheel",
                         "root": target.base, "parent": route.name})
        return rows
