"""Routing a request's `model` to what answers it: names, aliases in each traffic mode,
and adapters that learned without the workload's shared prefix."""

import json

import pytest

from flywheel.adapters import RECORD
from flywheel.config import RouteTarget
from flywheel.routes import RouteBook, adapter_checker, seed_states
from serve.routing import Route, RoutingTable, UnknownModel

SYSTEM = "You are the support router."
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
FULL = {"model": "router", "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}],
        "tools": TOOLS}


def make_adapter(root, base, name, prefix=None):
    folder = root / base / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    if prefix is not None:
        (folder / RECORD).write_text(json.dumps({"adapter_id": name, "prefix": prefix}))
    return folder


class Dice:
    """A stand-in for random.random: returns the queued values in turn."""

    def __init__(self, *values):
        self.values = list(values)

    def __call__(self):
        return self.values.pop(0)


def make_table(root, aliases, rng=None, audit_percent=0.0, audit_first=0):
    book = RouteBook(root / "routes.json", seed_states(aliases), "small", adapter_checker(["small", "big"], root))
    return RoutingTable(["small", "big"], book, root, **({"rng": rng} if rng else {}), audit_percent=audit_percent,
                        audit_first=audit_first)


@pytest.fixture
def table(tmp_path):
    make_adapter(tmp_path, "small", "support-v1")
    aliases = {"router": RouteTarget(base="small", adapter="support-v1"), "plain": RouteTarget(base="small")}
    return make_table(tmp_path, aliases)


def test_base_adapter_and_alias_resolve(table):
    assert table.resolve("small") == Route("small", None)
    assert table.resolve("small:support-v1") == Route("small", "support-v1")
    assert table.resolve("router") == Route("small", "support-v1")
    assert table.resolve("router").name == "small:support-v1"
    assert table.resolve("plain").name == "small"


@pytest.mark.parametrize("name", ["ghost", "big:support-v1", "small:nope", "small:", "small:../small/support-v1"])
def test_unknown_names_are_refused(table, name):
    with pytest.raises(UnknownModel):
        table.resolve(name)


def test_new_adapter_folder_is_routable_without_rebuilding(table, tmp_path):
    with pytest.raises(UnknownModel):
        table.resolve("big:fresh")
    make_adapter(tmp_path, "big", "fresh")
    assert table.resolve("big:fresh") == Route("big", "fresh")


def test_folder_without_adapter_config_is_not_an_adapter(table, tmp_path):
    (tmp_path / "small" / "half-written").mkdir()
    with pytest.raises(UnknownModel):
        table.resolve("small:half-written")


def test_list_models_names_bases_adapters_and_aliases(table):
    rows = {row["id"]: row for row in table.list_models()}
    assert set(rows) == {"small", "small:support-v1", "big", "plain", "router"}
    assert rows["small:support-v1"]["parent"] == "small"
    assert rows["router"]["parent"] == "small:support-v1"
    assert all(row["object"] == "model" for row in rows.values())


def test_a_promotion_in_the_book_routes_the_next_request(table, tmp_path):
    make_adapter(tmp_path, "small", "support-v2")
    other = make_table(tmp_path, {"router": RouteTarget(base="small", adapter="support-v1")})  # another replica
    other.book.promote("router", "support-v2")
    assert table.dispatch({**FULL}).route == Route("small", "support-v2")
    other.book.rollback("router")
    assert table.dispatch({**FULL}).route == Route("small", "support-v1")


def test_modes_pick_teacher_student_or_candidate(tmp_path):
    make_adapter(tmp_path, "small", "incumbent")
    make_adapter(tmp_path, "small", "trial")
    table = make_table(tmp_path, {"router": RouteTarget(base="big", adapter=None)}, rng=Dice(0.05, 0.5, 0.05))
    book = table.book
    teacher = table.dispatch(FULL)
    assert (teacher.route, teacher.role, teacher.mode) == (Route("big"), "teacher", "teacher")
    book.promote("router", "incumbent")
    assert table.dispatch(FULL).route == Route("small", "incumbent")
    book.set_mode("router", "canary", percent=10, candidate="trial")
    picks = [table.dispatch(FULL) for _ in range(3)]  # dice 0.05 < 10%, 0.5 >= 10%, 0.05 < 10%
    assert [(d.route.adapter, d.role) for d in picks] == [("trial", "candidate"), ("incumbent", "student"),
                                                          ("trial", "candidate")]
    book.set_mode("router", "shadow")
    shadowed = table.dispatch(FULL)
    assert shadowed.route == Route("big") and shadowed.shadow[0] == Route("small", "trial")
    assert shadowed.tags() == {"alias": "router", "mode": "shadow", "role": "teacher"}


def test_a_canary_is_sticky_per_user_and_keeps_its_users_as_it_grows(tmp_path):
    make_adapter(tmp_path, "small", "incumbent")
    make_adapter(tmp_path, "small", "trial")
    make_adapter(tmp_path, "small", "trial-2")
    table = make_table(tmp_path, {"router": RouteTarget(base="small", adapter="incumbent")})
    table.book.set_mode("router", "canary", percent=20, candidate="trial")
    users = [f"user-{i}" for i in range(2000)]

    def on_candidate() -> set[str]:
        return {user for user in users if table.dispatch({**FULL, "user": user}).role == "candidate"}

    first = on_candidate()
    assert 0.17 < len(first) / len(users) < 0.23  # ~20% of users, binomial sd ~0.9%
    assert on_candidate() == first  # the same users, every time
    table.book.set_mode("router", "canary", percent=50, candidate="trial")
    grown = on_candidate()
    assert first < grown and 0.46 < len(grown) / len(users) < 0.54  # nobody is moved back
    table.book.set_mode("router", "canary", percent=20, candidate="trial-2")
    assert len(on_candidate() & first) < 0.5 * len(first)  # a new candidate draws new users


def test_prefix_learned_by_an_adapter_is_stripped_and_a_foreign_prefix_goes_to_the_teacher(tmp_path):
    make_adapter(tmp_path, "small", "pruned", prefix={"system": SYSTEM, "tools": TOOLS})
    table = make_table(tmp_path, {"router": RouteTarget(base="big", adapter=None)})
    table.book.promote("router", "small:pruned")

    fitted = table.dispatch(FULL)
    assert fitted.route == Route("small", "pruned")
    assert fitted.body["messages"] == [{"role": "user", "content": "hi"}]
    assert fitted.body["tools"] == TOOLS and fitted.body["chat_template_kwargs"] == {"render_tools": False}
    assert FULL["messages"][0]["role"] == "system"  # the client's body (logged as sent) is untouched

    foreign = {**FULL, "messages": [{"role": "system", "content": "Another app."}, *FULL["messages"][1:]]}
    answered = table.dispatch(foreign)
    assert answered.route == Route("big") and answered.body is foreign
    assert answered.role == "teacher" and "prefix" in answered.note

    direct = table.dispatch({**foreign, "model": "small:pruned"})  # named explicitly: sent as is
    assert direct.route == Route("small", "pruned") and direct.body["messages"] == foreign["messages"]


def test_a_student_missing_from_disk_leaves_the_teacher_answering(tmp_path):
    folder = make_adapter(tmp_path, "small", "gone-soon")
    table = make_table(tmp_path, {"router": RouteTarget(base="big", adapter=None)})
    table.book.promote("router", "gone-soon")
    (folder / "adapter_config.json").unlink()
    dispatch = table.dispatch(FULL)
    assert dispatch.route == Route("big") and "unavailable" in dispatch.note


def test_the_teacher_audits_a_share_of_what_students_answer_and_all_that_candidates_do(tmp_path):
    """Each request a student answers draws once against `audit_percent`; a canary's
    candidate is on trial, so all it answers is audited. The teacher gets the body the
    client sent (the student's has its prefix stripped)."""
    make_adapter(tmp_path, "small", "pruned", prefix={"system": SYSTEM, "tools": TOOLS})
    make_adapter(tmp_path, "small", "trial")
    table = make_table(tmp_path, {"router": RouteTarget(base="big", adapter=None)}, audit_percent=10,
                       rng=Dice(0.05, 0.5, 0.01, 0.5))
    assert table.dispatch(FULL).shadow is None  # teacher mode: nothing to audit, no draw
    table.book.promote("router", "pruned")
    audited, plain = table.dispatch(FULL), table.dispatch(FULL)  # draws 0.05 (< 10%), 0.5
    assert (audited.route, audited.role, audited.shadow_role) == (Route("small", "pruned"), "student", "teacher")
    assert audited.shadow == (Route("big"), FULL) and audited.body["messages"] == FULL["messages"][1:]
    assert plain.route == Route("small", "pruned") and plain.shadow is None
    table.book.set_mode("router", "canary", percent=10, candidate="trial")
    candidate = table.dispatch(FULL)  # canary draw 0.01: the candidate answers, audited without a draw
    assert (candidate.route, candidate.role, candidate.shadow) == (Route("small", "trial"), "candidate",
                                                                    (Route("big"), FULL))
    assert candidate.fallback.route == Route("big") and candidate.fallback.body is FULL
    table.book.set_mode("router", "shadow")
    trial = table.dispatch(FULL)  # the teacher answers: its shadow is the candidate's, not an audit
    assert (trial.route, trial.shadow[0], trial.shadow_role) == (Route("big"), Route("small", "trial"), "candidate")
    assert table.rng.values == [0.5]  # no draw was spent where there was nothing to audit


def test_a_new_student_is_audited_on_its_first_requests_then_on_a_share(tmp_path):
    """`audit_first` 3 at 10%: a student's first 3 requests are audited without a draw,
    then each draws; a new promotion starts over; with no audits asked for, none."""
    make_adapter(tmp_path, "small", "s1")
    make_adapter(tmp_path, "small", "s2")
    table = make_table(tmp_path, {"router": RouteTarget(base="big", adapter=None)}, audit_percent=10, audit_first=3,
                       rng=Dice(*[0.5] * 8))

    def audited(count):
        return [table.dispatch(FULL).shadow is not None for _ in range(count)]

    table.book.promote("router", "s1")
    assert audited(5) == [True] * 3 + [False] * 2 and len(table.rng.values) == 8 - 2
    table.book.promote("router", "s2")
    assert audited(4) == [True] * 3 + [False] and len(table.rng.values) == 8 - 3
    none = make_table(tmp_path, {"other": RouteTarget(base="small", adapter="s1")}, audit_first=3)
    student = none.dispatch({**FULL, "model": "other"})
    assert (student.route, student.shadow) == (Route("small", "s1"), None)
    own = RoutingTable(["small", "big"], none.book, tmp_path, audit_percent=100, audits_per_alias={"other": (0, 0)})
    assert own.dispatch({**FULL, "model": "other"}).shadow is None  # `gate.per_alias.other.audit_percent: 0`
