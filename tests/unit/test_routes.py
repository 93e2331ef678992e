"""The route book: promotions, rollbacks and modes persisted atomically, with history."""

import json
import multiprocessing

import pytest

from flywheel.config import RouteTarget
from flywheel.routes import RouteBook, RouteError, adapter_checker, describe, seed_states


def make_adapter(root, base, name):
    folder = root / base / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")


def open_book(root):
    return RouteBook(root / "routes.json", seed_states({"router": RouteTarget(base="small", teacher="big")}),
                     "small", adapter_checker(["small", "big"], root))


@pytest.fixture
def book(tmp_path):
    for name in ("a", "b", "trial"):
        make_adapter(tmp_path, "small", name)
    return open_book(tmp_path)


def test_config_aliases_are_the_starting_state(book):
    state = book.get("router")
    assert (state.teacher, state.student, state.mode) == ("big", None, "teacher")
    assert book.get("unknown") is None


def test_promote_promote_rollback_walks_back_through_history(book):
    book.promote("router", "a")
    book.promote("router", "small:b", reason="better")
    assert (book.get("router").student, book.get("router").reason) == ("small:b", "better")
    assert book.rollback("router").student == "small:a"
    assert book.rollback("router").mode == "teacher"
    with pytest.raises(RouteError) as refused:
        book.rollback("router")
    assert refused.value.status == 409
    events = [event.action for event in book.table().events]
    assert events == ["promote", "promote", "rollback", "rollback"]
    assert book.get("router").teacher == "big"  # promotions keep the alias's teacher


def test_a_new_alias_gets_the_default_teacher_and_rolls_back_to_it(book):
    state = book.promote("support-tools", "a")
    assert (state.teacher, state.student) == ("small", "small:a")
    assert book.rollback("support-tools").mode == "teacher"


@pytest.mark.parametrize(("call", "status"), [
    (lambda b: b.promote("router", "ghost"), 404),
    (lambda b: b.promote("router", "huge:a"), 404),
    (lambda b: b.promote("bad alias!", "a"), 400),
    (lambda b: b.set_mode("router", "canary", percent=10), 400),  # no candidate yet
    (lambda b: b.set_mode("router", "student"), 400),  # no student yet
    (lambda b: b.set_mode("router", "fastest"), 400),
    (lambda b: b.set_mode("router", "canary", percent=150, candidate="trial"), 400),
])
def test_impossible_changes_are_refused_and_change_nothing(book, call, status):
    with pytest.raises(RouteError) as refused:
        call(book)
    assert refused.value.status == status and str(refused.value)
    assert book.table().version == 0 and not book.path.exists()


def test_an_adapter_id_on_two_bases_must_be_named_with_its_base(book, tmp_path):
    make_adapter(tmp_path, "big", "a")
    with pytest.raises(RouteError, match="base:a"):
        book.promote("router", "a")
    assert book.promote("router", "big:a").student == "big:a"


def test_canary_and_shadow_keep_the_student(book):
    book.promote("router", "a")
    state = book.set_mode("router", "canary", percent=25, candidate="trial")
    assert (state.mode, state.percent, state.student, state.candidate) == ("canary", 25, "small:a", "small:trial")
    assert book.set_mode("router", "shadow").candidate == "small:trial"
    assert describe(book)["aliases"]["router"]["history"] == 3


def _promote_many(root, adapter, count):
    book = open_book(root)
    for _ in range(count):
        book.promote("router", adapter)


def test_concurrent_writers_lose_no_change_and_readers_never_see_half_a_file(book, tmp_path):
    workers = [multiprocessing.get_context("spawn").Process(target=_promote_many, args=(tmp_path, name, 15))
               for name in ("a", "b")]
    for worker in workers:
        worker.start()
    seen = set()
    while any(worker.is_alive() for worker in workers):
        seen.add(json.loads((tmp_path / "routes.json").read_text())["version"] if book.path.exists() else 0)
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0
    table = book.table()
    assert table.version == 30 and len(table.events) == 30 and len(table.history["router"]) == 30
    assert max(seen) <= 30
