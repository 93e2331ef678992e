"""Which base model and adapter answer a request, and what body they get.

A `model` is a base (`smollm2`), `base:adapter` (`smollm2:support-v3`), or an alias
(`support-tools`) whose live state — teacher, student, candidate, traffic mode — comes
from the route book (flywheel/routes.py), re-read when it changes, so promotions and
rollbacks apply from the next request with no restart. A canary is sticky per end user:
a request carrying OpenAI's `user` field lands in a fixed bucket for that alias and
candidate, so one user sees one model (and stays on the candidate as its percent grows);
requests without `user` are drawn at random. A student or candidate that fails a request
(an error status, a timeout, an adapter that will not load, a prompt past its context)
hands it to the alias's teacher (`Dispatch.fallback`, serve/api.py). An audit
(`gate.audit_percent`) has the teacher also answer, in the background, a random share of
what a student answers (all that a canary's candidate answers: it is on trial): fresh
teacher answers to learn from, and live pairs to measure the student or candidate by. A
student's first `audit_first` requests after its alias changed are all audited (per
replica), so the gate has the audits a verdict needs after that many requests, not
after `audit_first / audit_percent` times as many.
Adapters are folders `<adapters_dir>/<base>/<adapter>/` holding a PEFT
`adapter_config.json`; a new folder is routable at once.

An adapter trained on prefix-pruned data (its `flywheel_adapter.json` records the
prefix) gets requests with that prefix stripped (flywheel/prefix.py). Through an alias,
a request that does not carry the prefix goes to the teacher instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flywheel.adapters import RECORD
from flywheel.prefix import strip_prefix
from flywheel.routes import AliasState, RouteBook, adapter_exists

logger = logging.getLogger("ray.serve")


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


@dataclass(frozen=True)
class Dispatch:
    """One request's routing: who answers, with which body, and (shadow mode) who else
    answers the same request in the background."""

    route: Route
    body: dict[str, Any]
    alias: str | None = None
    mode: str | None = None  # the alias's traffic mode
    role: str | None = None  # teacher, student or candidate: which of the alias's models answered
    note: str | None = None  # why the teacher answered instead of a student
    shadow: tuple[Route, dict[str, Any]] | None = None
    shadow_role: str = "candidate"  # what the shadow is: a candidate on trial, or the teacher auditing
    fallback: Dispatch | None = None  # the alias's teacher, should the student or candidate fail
    fallback_of: str | None = None  # the log id of the student's (or candidate's) failed attempt it answers for

    def tags(self) -> dict[str, str]:
        """What the log record keeps of this routing."""
        fields = {"alias": self.alias, "mode": self.mode, "role": self.role, "route_note": self.note,
                  "fallback_of": self.fallback_of}
        return {key: value for key, value in fields.items() if value is not None}


class RoutingTable:
    def __init__(self, bases: list[str], book: RouteBook, adapters_dir: Path,
                 rng: Callable[[], float] = random.random, audit_percent: float = 0.0, audit_first: int = 0,
                 audits_per_alias: dict[str, tuple[float, int]] | None = None):
        """`audit_percent` / `audit_first` hold for every alias but those in
        `audits_per_alias` (alias -> its own pair of them)."""
        self.bases = list(bases)
        self.book = book
        self.adapters_dir = adapters_dir
        self.rng = rng
        self.audits = (audit_percent, audit_first)
        self.audits_per_alias = audits_per_alias or {}
        self._prefixes: dict[tuple[str, str], dict | None] = {}
        self._first_audits: dict[str, tuple[tuple[str | None, float], int]] = {}  # alias -> (its state, audits)

    def has_adapter(self, base: str, adapter: str) -> bool:
        return adapter_exists(self.adapters_dir, base, adapter)

    def resolve(self, model: str) -> Route:
        """A model name as routes name it; an alias gives what answers most of its traffic."""
        state = self.book.get(model)
        if state is None:
            return self._named(model)
        return self._named(_primary(state), via=f"alias {model!r}")

    def dispatch(self, body: dict[str, Any]) -> Dispatch:
        model = body["model"]
        state = self.book.get(model)
        if state is None:
            route = self._named(model)
            return Dispatch(route, self._fitted(route, body) or body)
        via = f"alias {model!r}"
        teacher = self._named(state.teacher, via=via)
        shadow = None
        if state.mode == "shadow":
            candidate = self._usable(state.candidate, via)
            fitted = self._fitted(candidate, body) if candidate else None
            shadow = (candidate, fitted) if fitted is not None else None
        role, pick = "teacher", None
        if state.mode == "canary" and self._draw(model, state.candidate, body.get("user")) < state.percent:
            role, pick = "candidate", state.candidate
        elif state.mode in ("student", "canary") and state.student:
            role, pick = "student", state.student
        note = None
        if pick is not None:
            route = self._usable(pick, via)
            fitted = self._fitted(route, body) if route else None
            if fitted is not None:
                audit = (teacher, body) if self._audited(model, state, role) else None
                return Dispatch(route, fitted, model, state.mode, role, shadow=audit, shadow_role="teacher",
                                fallback=Dispatch(teacher, body, model, state.mode, "teacher"))
            note = f"{role} {pick} unavailable" if route is None else f"request lacks {role} {pick}'s learned prefix"
        return Dispatch(teacher, body, model, state.mode, "teacher", note, shadow)

    def _audited(self, alias: str, state: AliasState, role: str) -> bool:
        """Whether the teacher audits this answer: all a candidate on trial gives; a serving
        student's first `audit_first` since its alias last changed, then `audit_percent`%."""
        if role == "candidate":
            return True
        percent, first_ones = self.audits_per_alias.get(alias, self.audits)
        if not percent:
            return False
        since = (state.student, state.changed_at)
        seen, audits = self._first_audits.get(alias, (since, 0))
        audits = audits if seen == since else 0
        first = state.mode == "student" and audits < first_ones
        self._first_audits[alias] = (since, audits + first)
        return first or self.rng() * 100 < percent

    def _draw(self, alias: str, candidate: str | None, user: Any) -> float:
        """A number in [0, 100): the user's fixed bucket for this alias and candidate (a new
        candidate reshuffles who tries it), or a random one for anonymous requests."""
        if not isinstance(user, str) or not user:
            return self.rng() * 100
        digest = hashlib.sha256(f"{alias}\0{candidate}\0{user}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 * 100

    def prefix(self, route: Route) -> dict | None:
        """The prefix `route`'s adapter learned without (None: it takes full requests)."""
        if route.adapter is None:
            return None
        key = (route.base, route.adapter)
        if key not in self._prefixes:  # adapters are immutable: read the record once
            record = self.adapters_dir / route.base / route.adapter / RECORD
            self._prefixes[key] = json.loads(record.read_text()).get("prefix") if record.is_file() else None
        return self._prefixes[key]

    def _fitted(self, route: Route, body: dict[str, Any]) -> dict[str, Any] | None:
        prefix = self.prefix(route)
        return body if prefix is None else strip_prefix(body, prefix)

    def _usable(self, name: str | None, via: str) -> Route | None:
        """An alias's student or candidate, or None (logged) when it is gone from disk:
        the teacher answers rather than the client getting a 404."""
        try:
            return self._named(name, via=via) if name else None
        except UnknownModel as error:
            logger.warning("%s; the teacher answers instead", error)
            return None

    def _named(self, model: str, via: str | None = None) -> Route:
        prefix = f"{via} points at " if via else ""
        base, sep, adapter = model.partition(":")
        if base not in self.bases:
            served = ", ".join(self.bases + sorted(self.book.aliases()))
            raise UnknownModel(f"{prefix}model {base!r} does not exist; served: {served}")
        if sep and not self.has_adapter(base, adapter):
            raise UnknownModel(
                f"{prefix}adapter {adapter!r} does not exist for model {base!r} "
                f"(no {self.adapters_dir / base / adapter}/adapter_config.json)"
            )
        return Route(base, adapter if sep else None)

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
        for alias, state in sorted(self.book.aliases().items()):
            primary = _primary(state)
            rows.append({"id": alias, "object": "model", "created": created, "owned_by": "flywheel",
                         "root": primary.partition(":")[0], "parent": primary})
        return rows


def _primary(state: AliasState) -> str:
    """The model answering most of an alias's traffic."""
    return state.student if state.mode in ("student", "canary") and state.student else state.teacher
