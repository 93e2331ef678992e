"""Routing aliases as live state: which teacher, student and candidate each alias points
at, in which traffic mode, with the history that rollback walks back through.

The table is one JSON file (`<home>/routes.json`). A change takes an exclusive lock,
writes a new file and renames it over the old one, so a reader sees the old table or the
new one, never a mix; every ingress replica re-reads the file when it changes, so the
next request after a promotion is routed by the new table, with no replica restarted.
The CLI and the HTTP admin endpoints both change it through `RouteBook`.

Modes: `teacher` (the teacher answers), `student` (the promoted adapter answers),
`canary` (`percent`% of requests go to the candidate, the rest to the student, or the
teacher when there is none), `shadow` (the teacher answers; the candidate answers the
same request in the background and both are logged, linked).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from flywheel import telemetry
from flywheel.config import MODEL_NAME, FlywheelConfig, RouteTarget
from flywheel.file_state import exclusive, replace_file

Mode = Literal["teacher", "student", "canary", "shadow"]
MODES: tuple[str, ...] = ("teacher", "student", "canary", "shadow")


class RouteError(ValueError):
    """A route change that cannot be made; the message says why (HTTP 400/404/409)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class AliasState(BaseModel):
    """Where one alias sends its traffic. Models are named as requests name them:
    `base` or `base:adapter`."""

    teacher: str = Field(description="Answers in `teacher` and `shadow` modes, and when a student cannot.")
    student: str | None = Field(None, description="The promoted adapter (`base:adapter`), if any.")
    candidate: str | None = Field(None, description="The adapter under trial in `canary`/`shadow` modes.")
    mode: Mode = "teacher"
    percent: float = Field(0.0, ge=0, le=100, description="Share of requests the candidate answers in `canary`.")
    changed_at: float = Field(default_factory=time.time)
    reason: str = Field("", description="Why the alias is in this state (a gate decision, an operator...).")

    @property
    def student_adapter(self) -> str | None:
        """The promoted adapter's id (`student` without its `base:`), the gate's incumbent."""
        return self.student.partition(":")[2] if self.student else None

    @model_validator(mode="after")
    def _complete(self) -> AliasState:
        if self.mode == "student" and self.student is None:
            raise ValueError("mode `student` needs a promoted student")
        if self.mode in ("canary", "shadow") and self.candidate is None:
            raise ValueError(f"mode `{self.mode}` needs a candidate adapter")
        return self


class RouteEvent(BaseModel):
    at: float = Field(default_factory=time.time)
    alias: str
    action: str  # promote, rollback, mode
    before: AliasState | None
    after: AliasState


class RouteTable(BaseModel):
    version: int = 0
    aliases: dict[str, AliasState] = Field(default_factory=dict)
    history: dict[str, list[AliasState]] = Field(default_factory=dict)  # earlier states, newest last
    events: list[RouteEvent] = Field(default_factory=list)
    retired: list[str] = Field(default_factory=list)  # adapter ids `retire` took out: none is routed to again


def seed_states(aliases: dict[str, RouteTarget]) -> dict[str, AliasState]:
    """Config aliases as states: the start of every alias the table has not moved yet."""
    states = {}
    for alias, target in aliases.items():
        student = f"{target.base}:{target.adapter}" if target.adapter else None
        states[alias] = AliasState(teacher=target.teacher or target.base, student=student,
                                   mode="student" if student else "teacher", reason="config")
    return states


class RouteBook:
    """The routing table file. `check` validates a model name a change points at (raises
    `RouteError`) and returns it in canonical `base:adapter` form; `default_teacher` is the
    teacher of an alias that is neither in the file nor in the config."""

    def __init__(self, path: Path, seed: dict[str, AliasState], default_teacher: str,
                 check: Callable[[str], str]):
        self.path = Path(path)
        self.seed = dict(seed)
        self.default_teacher = default_teacher
        self.check = check
        self._cached: tuple[tuple[int, int, int], RouteTable] | None = None

    # -- reading (the ingress, per request) -------------------------------------------

    def table(self) -> RouteTable:
        """The current table; one `stat` when nothing changed since the last read."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return RouteTable()
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if self._cached is None or self._cached[0] != stamp:
            self._cached = (stamp, RouteTable.model_validate_json(self.path.read_bytes()))
        return self._cached[1]

    def aliases(self) -> dict[str, AliasState]:
        return {**self.seed, **self.table().aliases}

    def get(self, alias: str) -> AliasState | None:
        return self.table().aliases.get(alias) or self.seed.get(alias)

    # -- changing (CLI, admin endpoints, the gate) --------------------------------------

    def promote(self, alias: str, adapter: str, reason: str = "") -> AliasState:
        """The adapter answers the alias's traffic from the next request on."""
        student = self.check(adapter)

        def change(state: AliasState | None) -> AliasState:
            teacher = state.teacher if state else self.default_teacher
            return AliasState(teacher=teacher, student=student, mode="student", reason=reason or "promoted")

        state = self._change(alias, "promote", change)
        telemetry.promoted(alias, student, self._former_student(alias))
        return state

    def _former_student(self, alias: str) -> str | None:
        earlier = self.table().history.get(alias) or []
        return earlier[-1].student if earlier else None

    def set_mode(self, alias: str, mode: str, percent: float | None = None, candidate: str | None = None,
                 reason: str = "") -> AliasState:
        if mode not in MODES:
            raise RouteError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        checked = self.check(candidate) if candidate else None

        def change(state: AliasState | None) -> AliasState:
            current = state or AliasState(teacher=self.default_teacher)
            fields = {"mode": mode, "reason": reason or f"mode {mode}", "changed_at": time.time()}
            if checked:
                fields["candidate"] = checked
            if percent is not None:
                fields["percent"] = percent
            try:
                return AliasState.model_validate({**current.model_dump(), **fields})
            except ValueError as error:
                raise RouteError(f"alias {alias!r}: {_first_error(error)}") from None

        return self._change(alias, "mode", change)

    def rollback(self, alias: str, reason: str = "") -> AliasState:
        """Back to the state before the alias's last change (repeatable, down to the first)."""
        with self._locked() as table:
            earlier = table.history.get(alias) or []
            if not earlier:
                raise RouteError(f"alias {alias!r} has nothing to roll back to", status=409)
            before = table.aliases.get(alias) or self.seed.get(alias)
            after = earlier.pop().model_copy(update={"changed_at": time.time(),
                                                      "reason": reason or "rolled back"})
            table.aliases[alias] = after
            table.events.append(RouteEvent(alias=alias, action="rollback", before=before, after=after))
            return after

    def retire(self, adapters: set[str], reason: str) -> list[str]:
        """Take these adapter ids out of every alias: a retired student or candidate is
        dropped, a trial ends (the student, or else the teacher, answers) and rollback
        targets that name one are forgotten; from then on no change may name one (a gate
        that decided to promote one just before is refused, though its files still exist
        until the erasure deletes them). Returns the aliases whose state changed."""
        def retired(model: str | None) -> bool:
            return bool(model) and model.partition(":")[2] in adapters

        def names_one(state: AliasState) -> bool:
            return retired(state.student) or retired(state.candidate)

        changed = []
        with self._locked() as table:
            table.retired = sorted({*table.retired, *adapters})
            for alias, before in {**self.seed, **table.aliases}.items():
                if alias in table.history:
                    table.history[alias] = [state for state in table.history[alias] if not names_one(state)]
                if not names_one(before):
                    continue
                student = None if retired(before.student) else before.student
                after = AliasState(teacher=before.teacher, student=student, mode="student" if student else "teacher",
                                   reason=reason)
                table.aliases[alias] = after
                table.events.append(RouteEvent(alias=alias, action="retire", before=before, after=after))
                changed.append(alias)
        return changed

    def _change(self, alias: str, action: str, change: Callable[[AliasState | None], AliasState]) -> AliasState:
        if not MODEL_NAME.match(alias):
            raise RouteError(f"alias {alias!r}: use letters, digits, '.', '_' and '-' only")
        with self._locked() as table:
            before = table.aliases.get(alias) or self.seed.get(alias)
            after = change(before)
            for model in (after.student, after.candidate):
                if model and model.partition(":")[2] in table.retired:
                    raise RouteError(f"adapter {model!r} was retired (it learned from erased records): it cannot "
                                     "serve again", status=409)
            # a new alias rolls back to its teacher answering
            table.history.setdefault(alias, []).append(before or AliasState(teacher=after.teacher, reason="new"))
            table.aliases[alias] = after
            table.events.append(RouteEvent(alias=alias, action=action, before=before, after=after))
            return after

    @contextmanager
    def _locked(self) -> Iterator[RouteTable]:
        """Read-modify-write under an exclusive lock; the new table replaces the file
        atomically, and only when the body finished without an exception."""
        with exclusive(self.path.with_suffix(".lock")):
            table = RouteTable.model_validate_json(self.path.read_bytes()) if self.path.exists() else RouteTable()
            yield table
            table.version += 1
            replace_file(self.path, table.model_dump_json(indent=1))


def _first_error(error: ValueError) -> str:
    errors = getattr(error, "errors", None)
    if callable(errors):
        return str(errors()[0]["msg"]).removeprefix("Value error, ")
    return str(error)


def adapter_exists(adapters_dir: Path, base: str, adapter: str) -> bool:
    # The name check keeps `base:../../x` from reaching outside the adapters directory.
    return bool(MODEL_NAME.match(adapter)) and (Path(adapters_dir) / base / adapter / "adapter_config.json").is_file()


def adapter_checker(bases: list[str], adapters_dir: Path) -> Callable[[str], str]:
    """`RouteBook.check`: an adapter named `base:adapter`, or by its id alone when exactly
    one base has it, returned as `base:adapter`."""

    def check(name: str) -> str:
        base, sep, adapter = name.partition(":")
        if sep:
            if base not in bases:
                raise RouteError(f"model {base!r} is not served; served: {', '.join(bases)}", status=404)
            if not adapter_exists(adapters_dir, base, adapter):
                raise RouteError(f"adapter {adapter!r} does not exist for model {base!r}", status=404)
            return name
        owners = [b for b in bases if adapter_exists(adapters_dir, b, name)]
        if not owners:
            raise RouteError(f"adapter {name!r} does not exist under {adapters_dir} for any served model",
                             status=404)
        if len(owners) > 1:
            raise RouteError(f"adapter {name!r} exists for {', '.join(owners)}: name it as `base:{name}`")
        return f"{owners[0]}:{name}"

    return check


def open_route_book(config: FlywheelConfig) -> RouteBook:
    bases = [model.name for model in config.serve.models]
    return RouteBook(config.routes_path, seed_states(config.serve.aliases), bases[0],
                     adapter_checker(bases, config.adapters_dir))


def describe(book: RouteBook) -> dict:
    """The table as the CLI and `GET /v1/flywheel/routes` show it."""
    table = book.table()
    return {"version": table.version,
            "aliases": {alias: {**state.model_dump(mode="json"), "history": len(table.history.get(alias, []))}
                        for alias, state in sorted(book.aliases().items())}}
