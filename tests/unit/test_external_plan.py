"""The group's external routes in one server's view (services.registry.plan) and their records."""

from __future__ import annotations

from services.registry.plan import ExternalRoute, PlanView
from services.registry.records import ExternalRecord, KeyLayout, MemberInfo, ParsedKey, decode_route, encode_route

LOCAL = MemberInfo("local", "Local PBX", join_revision=50, trunk_address="10.0.0.1:5070")
A = MemberInfo("a", "PBX A", join_revision=10, trunk_address="10.0.0.2:5070")
B = MemberInfo("b", "PBX B", join_revision=20, trunk_address="10.0.0.3:5070")
MOBILE = r"8\d{10}"


def _view() -> tuple[PlanView, list[tuple[ExternalRoute, ...]]]:
    view = PlanView(LOCAL)
    heard: list[tuple[ExternalRoute, ...]] = []
    view.on_external(heard.append)
    return view, heard


def _who(routes: tuple[ExternalRoute, ...] | list[ExternalRoute]) -> list[tuple[str, str]]:
    return [(r.server_id, r.provider) for r in routes]


def test_routes_merge_by_priority_then_join_order_then_position() -> None:
    view, heard = _view()
    with view.batch():
        view.set_member(A)
        view.set_member(B)
        view.set_external("b", (ExternalRecord(MOBILE, "b1", 10, 0), ExternalRecord(r"\+.*", "b2", 5, 1)))
        view.set_external("a", (ExternalRecord(MOBILE, "a1", 10, 0), ExternalRecord(MOBILE, "a2", 10, 1)))
        view.set_external("local", (ExternalRecord(MOBILE, "own", 30, 0),))
    assert len(heard) == 1  # one batch, one message
    assert _who(view.external_routes) == [("b", "b2"), ("a", "a1"), ("a", "a2"), ("b", "b1"), ("local", "own")]
    own = view.external_routes[-1]
    assert own.local and own.trunk_address == "10.0.0.1:5070" and own.join_revision == 50
    assert _who(view.external_for("89161234567")) == [("a", "a1"), ("a", "a2"), ("b", "b1"), ("local", "own")]
    assert _who(view.external_for("+74951234567")) == [("b", "b2")]
    assert view.external_for("100") == []
    # The pattern is matched against the whole number, never a part of it.
    assert view.external_for("891612345678") == []


def test_only_live_members_routes_count_and_a_leaving_member_takes_them() -> None:
    view, heard = _view()
    view.set_external("a", (ExternalRecord(MOBILE, "a1", 10, 0),))
    assert view.external_routes == () and heard == []  # a is not a live member yet
    view.set_member(A)
    assert _who(view.external_routes) == [("a", "a1")]
    view.remove_member("a")
    assert view.external_routes == () and _who(heard[-1]) == []


def test_a_route_whose_provider_is_down_goes_after_every_live_one() -> None:
    view, _ = _view()
    with view.batch():
        view.set_member(A)
        view.set_member(B)
        view.set_external("a", (ExternalRecord(MOBILE, "a1", 1, 0, up=False),))
        view.set_external("b", (ExternalRecord(MOBILE, "b1", 50, 0),))
    assert [(r.server_id, r.up) for r in view.external_routes] == [("b", True), ("a", False)]


def test_single_route_events_and_a_full_read_replace_a_servers_routes() -> None:
    view, heard = _view()
    view.set_member(A)
    view.set_external_route("a", ExternalRecord(MOBILE, "a1", 10, 0))
    view.set_external_route("a", ExternalRecord(r"\+.*", "a2", 10, 1))
    assert _who(view.external_routes) == [("a", "a1"), ("a", "a2")]
    view.set_external_route("a", ExternalRecord(MOBILE, "a1", 1, 1))  # index 1 changed
    assert _who(view.external_routes) == [("a", "a1"), ("a", "a1")]
    view.remove_external_route("a", 0)
    assert [(r.provider, r.priority) for r in view.external_routes] == [("a1", 1)]
    count = len(heard)
    view.remove_external_route("a", 7)  # not there: nothing changes, nobody is told
    assert len(heard) == count
    view.replace_remote([A, B], {}, {}, {"b": [ExternalRecord(MOBILE, "b1", 10, 0)]})
    assert _who(view.external_routes) == [("b", "b1")]
    view.forget_remote()
    assert view.external_routes == ()


def test_route_keys_and_records() -> None:
    layout = KeyLayout("main")
    key = layout.route("r1", 3)
    assert key == "/pbxmesh/main/routes/r1/3"
    assert layout.parse(key) == ParsedKey("route", "r1", "3")
    assert layout.parse("/pbxmesh/main/routes/r1/x") is None
    assert layout.parse("/pbxmesh/main/routes/r1/") is None
    record = ExternalRecord(MOBILE, "carrier-a", 10, 3, up=False)
    assert decode_route("3", encode_route(record)) == record
    assert decode_route("0", b'{"pattern":"8.*","provider":"p"}') == ExternalRecord("8.*", "p", 100, 0, True)


def test_malformed_published_routes_are_dropped() -> None:
    for value in (
        b"not json",
        b"[]",
        b'{"pattern":"(","provider":"p"}',  # does not compile
        b'{"pattern":"","provider":"p"}',
        b'{"pattern":"8.*","priority":"high"}',
        b'{"pattern":"8.*","priority":70000}',
        b'{"pattern":"' + b"1" * 201 + b'"}',
    ):
        assert decode_route("0", value) is None, value
