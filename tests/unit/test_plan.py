"""Unit tests for the merged numbering plan (services.registry.plan) and key/record encoding
(services.registry.records). Pure data, no etcd."""

from __future__ import annotations

import pytest

from services.registry.plan import (
    Conflict,
    Department,
    MembersChange,
    NumbersChange,
    PlanView,
    Route,
)
from services.registry.records import (
    KeyLayout,
    MemberInfo,
    NumberRecord,
    ParsedKey,
    decode_department,
    decode_member,
    decode_number,
    encode_department,
    encode_member,
    encode_number,
)

LOCAL = MemberInfo(
    "local", "Local PBX", join_revision=50, registry_address="10.0.0.1:50051", trunk_address="10.0.0.1:5060"
)
A = MemberInfo("a", "PBX A", join_revision=10, registry_address="10.0.0.2:50051", trunk_address="10.0.0.2:5060")
B = MemberInfo("b", "PBX B", join_revision=20, registry_address="10.0.0.3:50051", trunk_address="10.0.0.3:5060")
C = MemberInfo("c", "PBX C", join_revision=30, trunk_address="10.0.0.4:5060")


class Recorder:
    """Collects what the view tells its listeners."""

    def __init__(self, view: PlanView):
        self.numbers: list[NumbersChange] = []
        self.members: list[MembersChange] = []
        view.on_numbers(self.numbers.append)
        view.on_members(self.members.append)

    def clear(self) -> None:
        self.numbers.clear()
        self.members.clear()

    def upserted(self) -> dict[str, Route]:
        result: dict[str, Route] = {}
        for change in self.numbers:
            for route in change.upserted:
                result[route.number] = route
        return result

    def removed(self) -> set[str]:
        return {number for change in self.numbers for number in change.removed}


def rec(number: str, name: str = "", department: str = "", kind: str = "user") -> NumberRecord:
    return NumberRecord(number, name, department, kind)


def route(member: MemberInfo, record: NumberRecord, local: bool = False) -> Route:
    return Route(
        number=record.number,
        server_id=member.server_id,
        server_name=member.name,
        local=local,
        display_name=record.name,
        department=record.department,
        kind=record.kind,
        trunk_address=member.trunk_address,
    )


def view_with(*members: MemberInfo) -> PlanView:
    view = PlanView(LOCAL)
    for member in members:
        view.set_member(member)
    return view


def winner_id(view: PlanView, number: str) -> str | None:
    resolved = view.resolve(number)
    return None if resolved is None else resolved.server_id


# -- who wins ----------------------------------------------------------------------------------


@pytest.mark.parametrize("local_first", [True, False])
def test_own_number_wins_over_earlier_joined_member(local_first: bool) -> None:
    view = view_with(A)
    local_rec, remote_rec = rec("100", "Local Alice"), rec("100", "Remote Bob")
    if local_first:
        view.set_number(LOCAL.server_id, local_rec)
        view.set_number(A.server_id, remote_rec)
    else:
        view.set_number(A.server_id, remote_rec)
        view.set_number(LOCAL.server_id, local_rec)
    assert A.join_revision < LOCAL.join_revision
    assert view.resolve("100") == route(LOCAL, local_rec, local=True)


@pytest.mark.parametrize("order", [("a", "b", "c"), ("c", "b", "a"), ("b", "c", "a")])
def test_lowest_join_revision_wins(order: tuple[str, ...]) -> None:
    view = view_with(A, B, C)
    for server_id in order:
        view.set_number(server_id, rec("200", f"from {server_id}"))
    assert view.resolve("200") == route(A, rec("200", "from a"))


def test_member_without_join_revision_sorts_last() -> None:
    fresh = MemberInfo("z", "PBX Z", join_revision=0)
    view = view_with(fresh, C)
    view.set_number("z", rec("300"))
    view.set_number("c", rec("300"))
    assert winner_id(view, "300") == "c"
    assert [m.server_id for m in view.live_members()] == ["c", "local", "z"]


def test_join_revision_tie_is_broken_by_server_id() -> None:
    x = MemberInfo("x", "X", join_revision=7)
    w = MemberInfo("w", "W", join_revision=7)
    view = view_with(x, w)
    view.set_number("x", rec("1"))
    view.set_number("w", rec("1"))
    assert winner_id(view, "1") == "w"


def test_unclaimed_number_resolves_to_none() -> None:
    view = view_with(A)
    view.set_number("a", rec("100"))
    assert view.resolve("101") is None


def test_live_members_in_join_order() -> None:
    view = view_with(C, A, B)
    assert [m.server_id for m in view.live_members()] == ["a", "b", "c", "local"]


# -- conflicts ---------------------------------------------------------------------------------


def test_conflicts_list_winner_and_losers_in_order() -> None:
    view = view_with(C, B, A)
    with view.batch():
        view.set_number("c", rec("100", "c100"))
        view.set_number("local", rec("100", "mine"))
        view.set_number("b", rec("100", "b100"))
        view.set_number("a", rec("100", "a100"))
        view.set_number("c", rec("200", "c200"))
        view.set_number("b", rec("200", "b200"))
        view.set_number("a", rec("300", "only a"))
        view.set_number("local", rec("400", "only local"))

    assert view.conflicts() == [
        Conflict(
            number="100",
            winner=LOCAL,
            winner_record=rec("100", "mine"),
            losers=((A, rec("100", "a100")), (B, rec("100", "b100")), (C, rec("100", "c100"))),
            own_number=True,
        ),
        Conflict(
            number="200",
            winner=B,
            winner_record=rec("200", "b200"),
            losers=((C, rec("200", "c200")),),
            own_number=False,
        ),
    ]


def test_conflicts_ignore_claims_of_non_members() -> None:
    view = view_with(A)
    view.set_number("a", rec("100"))
    view.set_number("ghost", rec("100"))
    assert view.conflicts() == []
    view.set_member(MemberInfo("ghost", "Ghost", join_revision=99))
    conflicts = view.conflicts()
    assert [(c.number, c.winner.server_id, [m.server_id for m, _ in c.losers]) for c in conflicts] == [
        ("100", "a", ["ghost"])
    ]


def test_conflict_disappears_when_loser_removes_number() -> None:
    view = view_with(A, B)
    view.set_number("a", rec("100"))
    view.set_number("b", rec("100"))
    assert len(view.conflicts()) == 1
    view.remove_number("b", "100")
    assert view.conflicts() == []
    assert winner_id(view, "100") == "a"


# -- membership rules --------------------------------------------------------------------------


def test_claim_of_non_member_is_ignored_until_member_appears() -> None:
    view = PlanView(LOCAL)
    seen = Recorder(view)
    ghost = MemberInfo("ghost", "Ghost PBX", join_revision=5, trunk_address="10.9.9.9:5060")

    view.set_number("ghost", rec("700", "G"))
    assert view.resolve("700") is None
    assert seen.numbers == []

    view.set_member(ghost)
    assert view.resolve("700") == route(ghost, rec("700", "G"))
    assert seen.numbers == [NumbersChange(upserted=(route(ghost, rec("700", "G")),), removed=())]


def test_non_member_claim_does_not_shadow_then_wins_on_join() -> None:
    view = view_with(B)
    view.set_number("b", rec("100", "b"))
    view.set_number("ghost", rec("100", "g"))
    assert winner_id(view, "100") == "b"

    seen = Recorder(view)
    ghost = MemberInfo("ghost", "Ghost", join_revision=5)
    view.set_member(ghost)
    assert winner_id(view, "100") == "ghost"
    assert seen.upserted() == {"100": route(ghost, rec("100", "g"))}
    assert seen.removed() == set()


def test_remove_member_drops_its_numbers_and_shadowed_claim_takes_over() -> None:
    view = view_with(A, B)
    view.set_number("a", rec("100", "a100"))
    view.set_number("b", rec("100", "b100"))
    view.set_number("a", rec("101", "only a"))
    view.set_number("b", rec("102", "only b"))
    seen = Recorder(view)

    view.remove_member("a")

    assert view.resolve("100") == route(B, rec("100", "b100"))
    assert view.resolve("101") is None
    assert view.resolve("102") == route(B, rec("102", "only b"))
    assert len(seen.numbers) == 1
    assert seen.numbers[0].upserted == (route(B, rec("100", "b100")),)
    assert seen.numbers[0].removed == ("101",)
    assert seen.members == [MembersChange(upserted=(), left=("a",), connected=False)]
    assert "a" not in view.members


def test_remove_member_ignores_local_and_unknown() -> None:
    view = view_with(A)
    view.set_number("local", rec("1"))
    seen = Recorder(view)
    view.remove_member("local")
    view.remove_member("nobody")
    assert "local" in view.members
    assert winner_id(view, "1") == "local"
    assert seen.numbers == []
    assert seen.members == []


def test_remove_number_lets_shadowed_claim_take_over() -> None:
    view = view_with(A, B)
    view.set_number("local", rec("100", "mine"))
    view.set_number("b", rec("100", "b100"))
    seen = Recorder(view)
    view.remove_number("local", "100")
    assert seen.numbers == [NumbersChange(upserted=(route(B, rec("100", "b100")),), removed=())]
    view.remove_number("b", "100")
    assert view.resolve("100") is None
    assert seen.numbers[-1] == NumbersChange(upserted=(), removed=("100",))


def test_remove_number_of_unknown_claim_is_silent() -> None:
    view = view_with(A)
    view.set_number("a", rec("100"))
    seen = Recorder(view)
    view.remove_number("a", "999")
    view.remove_number("nobody", "100")
    assert seen.numbers == []
    assert winner_id(view, "100") == "a"


def test_setting_the_same_record_again_is_silent() -> None:
    view = view_with(A)
    view.set_number("a", rec("100", "x"))
    seen = Recorder(view)
    view.set_number("a", rec("100", "x"))
    view.set_member(A)
    assert seen.numbers == []
    assert seen.members == []


def test_changed_record_of_winner_is_reported() -> None:
    view = view_with(A)
    view.set_number("a", rec("100", "old"))
    seen = Recorder(view)
    view.set_number("a", rec("100", "new", kind="queue"))
    assert seen.numbers == [NumbersChange(upserted=(route(A, rec("100", "new", kind="queue")),), removed=())]


def test_changed_record_of_loser_is_not_reported() -> None:
    view = view_with(A, B)
    view.set_number("a", rec("100", "a"))
    view.set_number("b", rec("100", "b"))
    seen = Recorder(view)
    view.set_number("b", rec("100", "b changed"))
    assert seen.numbers == []
    assert view.resolve("100") == route(A, rec("100", "a"))


# -- forget_remote / replace_remote ------------------------------------------------------------


def test_forget_remote_keeps_only_local_numbers_and_member() -> None:
    view = view_with(A, B)
    view.set_department("local", "sales", "Sales")
    view.set_department("a", "hr", "HR")
    view.set_number("local", rec("100", "mine", "sales"))
    view.set_number("a", rec("100", "theirs"))
    view.set_number("a", rec("200"))
    view.set_number("b", rec("300"))
    seen = Recorder(view)

    view.forget_remote()

    assert list(view.members) == ["local"]
    assert list(view.plans) == ["local"]
    assert list(view.departments) == ["local"]
    assert view.routes == {"100": route(LOCAL, rec("100", "mine", "sales"), local=True)}
    assert view.conflicts() == []
    assert len(seen.numbers) == 1
    assert seen.numbers[0].upserted == ()
    assert sorted(seen.numbers[0].removed) == ["200", "300"]
    assert len(seen.members) == 1
    assert seen.members[0].left == ("a", "b")
    assert [d.id for d in view.merged_departments()] == ["sales"]


def test_forget_remote_then_member_returns_without_old_claims() -> None:
    view = view_with(A)
    view.set_number("a", rec("200"))
    view.forget_remote()
    view.set_member(A)
    assert view.resolve("200") is None


def _replace_setup() -> tuple[PlanView, Recorder]:
    view = view_with(A, B)
    view.set_number("local", rec("100", "mine"))
    view.set_number("a", rec("100", "a100"))
    view.set_number("a", rec("200", "a200"))
    view.set_number("a", rec("201", "a201"))
    view.set_number("b", rec("300", "b300"))
    view.set_number("b", rec("200", "b200"))
    view.set_department("a", "hr", "HR")
    view.set_department("b", "ops", "Ops")
    return view, Recorder(view)


def test_replace_remote_with_the_same_state_reports_nothing() -> None:
    view, seen = _replace_setup()
    view.replace_remote(
        [LOCAL, A, B],
        {
            "a": [rec("100", "a100"), rec("200", "a200"), rec("201", "a201")],
            "b": [rec("300", "b300"), rec("200", "b200")],
        },
        {"a": {"hr": "HR"}, "b": {"ops": "Ops"}},
    )
    assert seen.numbers == []
    assert seen.members == []
    assert winner_id(view, "200") == "a"


def test_replace_remote_reports_only_the_difference() -> None:
    view, seen = _replace_setup()
    d = MemberInfo("d", "PBX D", join_revision=40)

    view.replace_remote(
        [A, d],
        {
            "a": [rec("100", "a100 renamed"), rec("200", "a200"), rec("202", "new")],
            "d": [rec("400", "d400")],
            "local": [rec("999", "echo of local must be ignored")],
        },
        {"a": {"hr": "Human Resources"}, "d": {"x": "X"}},
    )

    assert len(seen.numbers) == 1
    change = seen.numbers[0]
    assert {r.number: r for r in change.upserted} == {
        "202": route(A, rec("202", "new")),
        "400": route(d, rec("400", "d400")),
    }
    assert sorted(change.removed) == ["201", "300"]
    assert view.resolve("100") == route(LOCAL, rec("100", "mine"), local=True)
    assert view.resolve("200") == route(A, rec("200", "a200"))
    assert view.resolve("999") is None
    assert set(view.members) == {"local", "a", "d"}
    assert view.departments == {"local": {}, "a": {"hr": "Human Resources"}, "d": {"x": "X"}}
    assert seen.members == [MembersChange(upserted=(d,), left=("b",), connected=False)]


def test_replace_remote_shadowed_claim_takes_over_when_winner_vanishes() -> None:
    view, seen = _replace_setup()
    view.replace_remote([A, B], {"a": [rec("100", "a100")], "b": [rec("300", "b300"), rec("200", "b200")]}, {})
    assert len(seen.numbers) == 1
    assert seen.numbers[0].upserted == (route(B, rec("200", "b200")),)
    assert seen.numbers[0].removed == ("201",)


def test_replace_remote_updates_local_member_record() -> None:
    view = PlanView(LOCAL)
    view.set_number("local", rec("100"))
    seen = Recorder(view)
    joined = MemberInfo("local", "Local PBX", join_revision=77, trunk_address=LOCAL.trunk_address)
    view.replace_remote([joined], {}, {})
    assert view.members["local"] == joined
    assert seen.members == [MembersChange(upserted=(joined,), left=(), connected=False)]
    assert seen.numbers == []  # the route of 100 does not carry the join revision


# -- batches and listeners ---------------------------------------------------------------------


def test_batch_delivers_one_notification_for_many_changes() -> None:
    view = view_with(A)
    seen = Recorder(view)
    with view.batch():
        for i in range(10):
            view.set_number("a", rec(str(100 + i)))
        view.set_number("local", rec("500"))
        with view.batch():
            view.set_number("a", rec("600"))
            view.remove_number("a", "600")
        assert seen.numbers == []
    assert len(seen.numbers) == 1
    assert sorted(r.number for r in seen.numbers[0].upserted) == [str(100 + i) for i in range(10)] + ["500"]
    assert seen.numbers[0].removed == ()  # 600 came and went within the batch


def test_batch_flushes_even_when_body_raises() -> None:
    view = view_with(A)
    seen = Recorder(view)
    with pytest.raises(RuntimeError), view.batch():
        view.set_number("a", rec("100"))
        raise RuntimeError("boom")
    assert [r.number for c in seen.numbers for r in c.upserted] == ["100"]


def test_unsubscribe_stops_notifications() -> None:
    view = view_with(A)
    numbers: list[NumbersChange] = []
    members: list[MembersChange] = []
    off_numbers = view.on_numbers(numbers.append)
    off_members = view.on_members(members.append)
    view.set_number("a", rec("1"))
    view.set_member(B)
    assert len(numbers) == 1
    assert len(members) == 1
    off_numbers()
    off_members()
    view.set_number("a", rec("2"))
    view.set_member(C)
    assert len(numbers) == 1
    assert len(members) == 1


def test_members_listener_reports_joined_left_connected() -> None:
    view = PlanView(LOCAL)
    seen = Recorder(view)

    view.set_connected(True)
    assert seen.members == [MembersChange(upserted=(), left=(), connected=True)]
    view.set_connected(True)
    assert len(seen.members) == 1

    view.set_member(A)
    assert seen.members[-1] == MembersChange(upserted=(A,), left=(), connected=True)

    renamed = MemberInfo("a", "PBX A renamed", join_revision=10)
    view.set_member(renamed)
    assert seen.members[-1] == MembersChange(upserted=(renamed,), left=(), connected=True)

    with view.batch():
        view.set_member(B)
        view.set_member(C)
        view.remove_member("a")
    assert seen.members[-1] == MembersChange(upserted=(B, C), left=("a",), connected=True)

    view.set_connected(False)
    assert seen.members[-1] == MembersChange(upserted=(), left=(), connected=False)
    assert len(seen.members) == 5
    assert view.connected is False


# -- routes and member records -----------------------------------------------------------------


def test_routes_carry_server_name_and_trunk_address() -> None:
    view = view_with(A)
    view.set_number("a", rec("100", "Alice", "sales", "user"))
    view.set_number("local", rec("200", "Bob", "", "ivr"))
    assert view.resolve("100") == Route(
        number="100",
        server_id="a",
        server_name="PBX A",
        local=False,
        display_name="Alice",
        department="sales",
        kind="user",
        trunk_address="10.0.0.2:5060",
    )
    assert view.resolve("200") == Route(
        number="200",
        server_id="local",
        server_name="Local PBX",
        local=True,
        display_name="Bob",
        department="",
        kind="ivr",
        trunk_address="10.0.0.1:5060",
    )


def test_routes_update_when_member_record_changes() -> None:
    view = view_with(A, B)
    view.set_number("a", rec("100", "Alice"))
    view.set_number("a", rec("101", "Carol"))
    view.set_number("b", rec("101", "shadowed"))
    view.set_number("b", rec("200", "Bob"))
    seen = Recorder(view)

    moved = MemberInfo("a", "PBX A (moved)", join_revision=10, trunk_address="192.168.1.1:5070")
    view.set_member(moved)

    assert view.resolve("100") == route(moved, rec("100", "Alice"))
    assert view.resolve("100") is not None
    assert len(seen.numbers) == 1
    assert {r.number: r for r in seen.numbers[0].upserted} == {
        "100": route(moved, rec("100", "Alice")),
        "101": route(moved, rec("101", "Carol")),
    }
    assert seen.numbers[0].removed == ()
    assert view.resolve("200") == route(B, rec("200", "Bob"))


def test_member_rejoin_with_later_revision_loses_its_numbers() -> None:
    view = view_with(A, B)
    view.set_number("a", rec("100", "a"))
    view.set_number("b", rec("100", "b"))
    seen = Recorder(view)
    view.set_member(MemberInfo("a", "PBX A", join_revision=90, trunk_address=A.trunk_address))
    assert winner_id(view, "100") == "b"
    assert seen.upserted() == {"100": route(B, rec("100", "b"))}


# -- departments -------------------------------------------------------------------------------


def test_departments_merged_by_id() -> None:
    view = view_with(B, A)  # A joined before B; LOCAL joined last
    view.set_department("local", "sales", "Local Sales")
    view.set_department("a", "sales", "A Sales")
    view.set_department("b", "sales", "B Sales")
    view.set_department("b", "hr", "B HR")
    view.set_department("a", "hr", "A HR")
    view.set_department("b", "ops", "B Ops")
    view.set_department("ghost", "ops", "Ghost Ops")
    view.set_department("ghost", "secret", "Ghost only")
    view.set_number("local", rec("100", "L", "sales"))
    view.set_number("a", rec("200", "A2", "sales"))
    view.set_number("b", rec("150", "B1", "hr"))
    view.set_number("a", rec("300", "A3", "hr"))
    view.set_number("b", rec("400", "B4", "adhoc"))
    view.set_number("b", rec("100", "shadowed", "hr"))
    view.set_number("a", rec("500", "no dept"))

    assert view.merged_departments() == [
        Department(
            id="adhoc",
            name="adhoc",
            server_ids=(),
            numbers=(route(B, rec("400", "B4", "adhoc")),),
        ),
        Department(
            id="hr",
            name="A HR",
            server_ids=("a", "b"),
            numbers=(route(B, rec("150", "B1", "hr")), route(A, rec("300", "A3", "hr"))),
        ),
        Department(id="ops", name="B Ops", server_ids=("b",), numbers=()),
        Department(
            id="sales",
            name="Local Sales",
            server_ids=("a", "b", "local"),
            numbers=(route(LOCAL, rec("100", "L", "sales"), local=True), route(A, rec("200", "A2", "sales"))),
        ),
    ]


def test_department_name_from_earliest_member_follows_join_order() -> None:
    early_b = MemberInfo("b", "PBX B", join_revision=3)
    view = view_with(A, early_b)
    view.set_department("a", "hr", "A HR")
    view.set_department("b", "hr", "B HR")
    [dep] = view.merged_departments()
    assert dep.name == "B HR"
    assert dep.server_ids == ("b", "a")


def test_department_of_removed_member_disappears() -> None:
    view = view_with(A)
    view.set_department("a", "hr", "A HR")
    view.set_department("local", "sales", "Sales")
    view.remove_member("a")
    assert [(d.id, d.server_ids) for d in view.merged_departments()] == [("sales", ("local",))]


def test_remove_department() -> None:
    view = view_with(A)
    view.set_department("a", "hr", "A HR")
    view.set_department("local", "hr", "Local HR")
    view.remove_department("local", "hr")
    view.remove_department("nobody", "hr")
    [dep] = view.merged_departments()
    assert (dep.id, dep.name, dep.server_ids) == ("hr", "A HR", ("a",))


# -- records: key layout -----------------------------------------------------------------------


def test_key_layout_names() -> None:
    layout = KeyLayout("main")
    assert layout.prefix == "/pbxmesh/main/"
    assert layout.member("alpha") == "/pbxmesh/main/members/alpha"
    assert layout.number("alpha", "*100#") == "/pbxmesh/main/numbers/alpha/*100#"
    assert layout.department("alpha", "sales") == "/pbxmesh/main/departments/alpha/sales"


@pytest.mark.parametrize("group", ["main", "office.berlin", "a-b_c"])
@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda k: k.member("alpha"), ParsedKey("member", "alpha")),
        (lambda k: k.member("a-1"), ParsedKey("member", "a-1", "")),
        (lambda k: k.number("alpha", "100"), ParsedKey("number", "alpha", "100")),
        (lambda k: k.number("b", "+49*#1"), ParsedKey("number", "b", "+49*#1")),
        (lambda k: k.department("alpha", "sales.eu"), ParsedKey("department", "alpha", "sales.eu")),
    ],
)
def test_key_layout_round_trip(group: str, build: object, expected: ParsedKey) -> None:
    layout = KeyLayout(group)
    assert callable(build)
    key = build(layout)
    assert isinstance(key, str)
    assert key.startswith(f"/pbxmesh/{group}/")
    assert layout.parse(key) == expected


@pytest.mark.parametrize(
    "key",
    [
        "/pbxmesh/other/members/alpha",
        "/pbxmesh/mainx/members/alpha",
        "/pbxmesh/main-2/numbers/alpha/100",
        "/pbxmesh/main",
        "/pbxmesh/main/",
        "/other/main/members/alpha",
        "pbxmesh/main/members/alpha",
        "",
        "/pbxmesh/main/members",
        "/pbxmesh/main/members/",
        "/pbxmesh/main/members/alpha/extra",
        "/pbxmesh/main/numbers/alpha",
        "/pbxmesh/main/numbers/alpha/100/x",
        "/pbxmesh/main/numbers//100",
        "/pbxmesh/main/numbers/alpha/",
        "/pbxmesh/main/departments/alpha",
        "/pbxmesh/main/departments//sales",
        "/pbxmesh/main/departments/alpha/",
        "/pbxmesh/main/departments/alpha/sales/x",
        "/pbxmesh/main/things/alpha/x",
        "/pbxmesh/main/member/alpha",
        "/pbxmesh/main//alpha",
    ],
)
def test_parse_ignores_foreign_and_malformed_keys(key: str) -> None:
    assert KeyLayout("main").parse(key) is None


# -- records: encoding -------------------------------------------------------------------------


def test_member_round_trip() -> None:
    info = MemberInfo("alpha", "Älpha PBX", 0, "10.0.0.1:1", "t:5060", "c:50071")
    encoded = encode_member(info)
    assert encoded == '{"name":"Älpha PBX","registry":"10.0.0.1:1","trunk":"t:5060","callstate":"c:50071"}'.encode()
    assert decode_member("alpha", encoded, 42) == MemberInfo(
        "alpha", "Älpha PBX", 42, "10.0.0.1:1", "t:5060", "c:50071"
    )
    # A record written before members advertised a callstate still reads.
    older = decode_member("alpha", b'{"name":"A","registry":"r:1","trunk":"t:1"}', 7)
    assert older == MemberInfo("alpha", "A", 7, "r:1", "t:1", "")


def test_number_round_trip() -> None:
    record = NumberRecord("*100#", "Queue", "sales", "queue")
    encoded = encode_number(record)
    assert encoded == b'{"name":"Queue","department":"sales","kind":"queue"}'
    assert decode_number("*100#", encoded) == record


def test_department_round_trip() -> None:
    assert encode_department("Sales") == b'{"name":"Sales"}'
    assert decode_department(encode_department("Sales")) == "Sales"


def test_decode_fills_missing_or_mistyped_fields() -> None:
    assert decode_member("alpha", b'{"name": 5, "trunk": ["x"]}', 7) == MemberInfo("alpha", "alpha", 7, "", "")
    assert decode_number("100", b"{}") == NumberRecord("100", "", "", "user")
    assert decode_number("100", b'{"kind": 3, "name": "N"}') == NumberRecord("100", "N", "", "user")
    assert decode_department(b'{"name": 1}') == ""


GARBAGE = [b"", b"not json", b"{", b"[1, 2]", b"null", b"42", b'"text"', b"\xff\xfe\x00", b"NaN", b"{'a': 1}"]


@pytest.mark.parametrize("value", GARBAGE)
def test_decode_garbage_returns_none(value: bytes) -> None:
    assert decode_member("alpha", value, 1) is None
    assert decode_number("100", value) is None
    assert decode_department(value) is None


def test_decode_deeply_nested_garbage_returns_none() -> None:
    value = b"[" * 100_000
    assert decode_member("alpha", value, 1) is None
    assert decode_number("100", value) is None
    assert decode_department(value) is None


# -- a full read in slices ---------------------------------------------------------------------


def _many(server: str, count: int) -> list[NumberRecord]:
    return [NumberRecord(str(1000 + i), f"{server}-{i}") for i in range(count)]


def test_replace_remote_steps_yields_between_slices_and_publishes_once_at_the_end() -> None:
    view = PlanView(LOCAL)
    recorder = Recorder(view)
    steps = view.replace_remote_steps([A], {"a": _many("a", 250)}, {}, step=50)
    slices = 0
    for _ in steps:
        slices += 1
        assert recorder.numbers == []  # nothing published half way
        assert view.routes == {}
    assert slices >= 5
    assert len(recorder.numbers) == 1 and len(recorder.numbers[0].upserted) == 250
    assert view.routes["1000"].server_id == "a"


def test_changes_between_slices_end_up_with_their_latest_route() -> None:
    view = PlanView(LOCAL)
    recorder = Recorder(view)
    steps = view.replace_remote_steps([A], {"a": _many("a", 200)}, {}, step=50)
    next(steps)
    # The local server takes one of a's numbers while the read is half done.
    view.set_number("local", NumberRecord("1001", "mine now"))
    assert recorder.numbers == []  # deferred until the read is published
    for _ in steps:
        pass
    assert view.routes["1001"].server_id == "local"
    assert recorder.upserted()["1001"].server_id == "local"  # the last word is the right one
    assert view.routes["1000"].server_id == "a"


def test_a_read_stopped_half_way_still_publishes_what_it_changed() -> None:
    view = PlanView(LOCAL)
    view.replace_remote([A], {"a": _many("a", 100)}, {})
    recorder = Recorder(view)
    steps = view.replace_remote_steps([], {}, {}, step=10)  # a left, as seen by a resync
    next(steps)
    steps.close()
    assert view.routes == {}
    assert recorder.removed() == {r.number for r in _many("a", 100)}
    view.set_number("local", NumberRecord("5"))  # and the view still publishes at once
    assert recorder.upserted()["5"].server_id == "local"


def test_decode_numbers_in_bulk_and_with_malformed_values() -> None:
    from services.registry.records import decode_numbers

    good = [(str(n), encode_number(NumberRecord(str(n), f"name {n}", "sales", "ivr"))) for n in range(100, 110)]
    assert decode_numbers(good) == [NumberRecord(str(n), f"name {n}", "sales", "ivr") for n in range(100, 110)]
    mixed = [good[0], ("201", b"not json"), ("202", b'{"a":1},{"b":2}'), ("203", b"[1,2]"), ("204", b""), good[1]]
    decoded = decode_numbers(mixed)
    assert decoded[0] == NumberRecord("100", "name 100", "sales", "ivr")
    assert decoded[1:5] == [None, None, None, None]
    assert decoded[5] == NumberRecord("101", "name 101", "sales", "ivr")
    assert decode_numbers([]) == []
