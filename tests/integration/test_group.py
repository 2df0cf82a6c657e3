"""A group of registry processes on a real etcd: join, publish, merge, leave, crash, duplicate id."""

from __future__ import annotations

import signal
import time
from collections.abc import Awaitable

import grpc

from pbxmesh.registry.v1 import registry_pb2 as pb
from tests.support import Group, has_numbers, lacks_number, member_ids_are, next_message, owner_is, wait_for


async def test_three_servers_share_one_plan_and_resolve_conflicts_by_own_then_join_order(
    group: Group,
) -> None:
    alpha = await group.start("alpha", ["100", "101", "555", "777"])
    beta = await group.start("beta", ["200", "555", "777", "888"])
    gamma = await group.start("gamma", ["300", "555", "888"])

    everyone = {"100", "101", "200", "300", "555", "777", "888"}
    for server in (alpha, beta, gamma):
        await wait_for(lambda s=server: has_numbers(s, everyone), what=f"full plan on {server.id}")  # type: ignore[misc]

    # Members, earliest joined first, identical order on every server.
    for server in (alpha, beta, gamma):
        members = await server.members()
        assert members.connected
        assert [m.server_id for m in members.members] == ["alpha", "beta", "gamma"]
        assert [m.local for m in members.members] == [s is server for s in (alpha, beta, gamma)]
        revisions = [m.join_revision for m in members.members]
        assert revisions == sorted(revisions) and revisions[0] > 0

    # 555 is everyone's: each server keeps its own.
    assert (await alpha.owners())["555"] == "alpha"
    assert (await beta.owners())["555"] == "beta"
    assert (await gamma.owners())["555"] == "gamma"
    # 777 (alpha, beta): alpha joined first, so gamma routes it to alpha; beta keeps its own.
    assert (await gamma.owners())["777"] == "alpha"
    assert (await beta.owners())["777"] == "beta"
    # 888 (beta, gamma): alpha has none, beta joined before gamma.
    assert (await alpha.owners())["888"] == "beta"
    assert (await gamma.owners())["888"] == "gamma"

    route = await gamma.resolve("100")
    assert route is not None
    assert (route.server_id, route.server_name, route.local, route.display_name) == (
        "alpha", "Alpha office", False, "alpha-100",
    )  # fmt: skip

    # Conflicts from gamma's point of view: who wins, who loses, and why.
    conflicts = {c.number: c for c in (await gamma.stub.ListConflicts(pb.ListConflictsRequest())).conflicts}
    assert set(conflicts) == {"555", "777", "888"}
    assert conflicts["555"].winner.server_id == "gamma"
    assert conflicts["555"].reason == pb.CONFLICT_REASON_OWN_NUMBER
    assert [c.server_id for c in conflicts["555"].losers] == ["alpha", "beta"]
    assert conflicts["777"].winner.server_id == "alpha"
    assert conflicts["777"].reason == pb.CONFLICT_REASON_EARLIER_JOIN
    assert [c.server_id for c in conflicts["777"].losers] == ["beta"]
    assert conflicts["888"].winner.server_id == "gamma"
    # From alpha's: 888 goes to beta by join order, and 555 stays alpha's.
    conflicts = {c.number: c for c in (await alpha.stub.ListConflicts(pb.ListConflictsRequest())).conflicts}
    assert conflicts["888"].winner.server_id == "beta"
    assert conflicts["888"].reason == pb.CONFLICT_REASON_EARLIER_JOIN
    assert [c.server_id for c in conflicts["888"].losers] == ["gamma"]
    assert conflicts["555"].winner.server_id == "alpha"

    # From beta's: its own 555, 777 and 888 win; the losers are listed in join order.
    conflicts = {c.number: c for c in (await beta.stub.ListConflicts(pb.ListConflictsRequest())).conflicts}
    assert {n: c.winner.server_id for n, c in conflicts.items()} == {"555": "beta", "777": "beta", "888": "beta"}
    assert all(c.reason == pb.CONFLICT_REASON_OWN_NUMBER for c in conflicts.values())
    assert [c.server_id for c in conflicts["555"].losers] == ["alpha", "gamma"]

    # When alpha leaves, gamma's 777 falls to beta, the next in join order.
    await alpha.stop()
    await wait_for(lambda: owner_is(gamma, "777", "beta"), what="777 to fall to beta on gamma")


async def test_departments_merge_across_servers(group: Group) -> None:
    alpha = await group.start(
        "alpha",
        [{"number": "100", "name": "Alice", "department": "sales"}],
        departments=[{"id": "sales", "name": "Sales"}],
    )
    await group.start(
        "beta",
        [
            {"number": "120", "name": "Erin", "department": "sales"},
            {"number": "200", "department": "support"},
        ],
        departments=[{"id": "sales", "name": "Sales (Beta)"}, {"id": "support", "name": "Support"}],
    )

    async def departments() -> dict[str, pb.Department]:
        response = await alpha.stub.ListDepartments(pb.ListDepartmentsRequest())
        return {d.id: d for d in response.departments}

    await wait_for(lambda: has_numbers(alpha, {"100", "120", "200"}), what="beta's numbers on alpha")
    deps = await departments()
    assert deps["sales"].name == "Sales"  # alpha's own name for it
    assert list(deps["sales"].server_ids) == ["alpha", "beta"]
    assert [(r.number, r.server_id) for r in deps["sales"].numbers] == [("100", "alpha"), ("120", "beta")]
    assert deps["support"].name == "Support"
    assert [r.number for r in deps["support"].numbers] == ["200"]


async def test_duplicate_server_id_is_refused_naming_the_holder(group: Group) -> None:
    await group.start("alpha", ["100"], name="Alpha HQ")
    twin = group.server("alpha", ["999"], name="Alpha copy")
    await twin.start(wait_ready=False)
    code = await twin.wait_exit(15)
    assert code == 3
    text = "".join(twin.log)
    assert "'alpha'" in text and "Alpha HQ" in text and "already used" in text
    # The first alpha is untouched and its numbers stay the group's.
    observer = await group.start("beta")
    await wait_for(lambda: owner_is(observer, "100", "alpha"), what="alpha's 100 on beta")
    assert await observer.resolve("999") is None


async def test_sigterm_revokes_the_lease_so_peers_drop_numbers_at_once(group: Group) -> None:
    alpha = await group.start("alpha", ["100"])
    beta = await group.start("beta", ["200"], lease_ttl=30)
    await wait_for(lambda: has_numbers(alpha, {"200"}), what="beta's 200 on alpha")
    started = time.monotonic()
    beta.send(signal.SIGTERM)
    await wait_for(lambda: lacks_number(alpha, "200"), timeout=10, what="200 gone from alpha")
    gone_after = time.monotonic() - started
    assert await beta.wait_exit() == 0
    # With a 30 s lease, only a revoke explains seeing it go within seconds.
    assert gone_after < 10
    assert await alpha.member_ids() == ["alpha"]


async def test_kill_9_expires_with_the_lease(group: Group) -> None:
    alpha = await group.start("alpha", ["100"])
    beta = await group.start("beta", ["200"], lease_ttl=2)
    await wait_for(lambda: has_numbers(alpha, {"200"}), what="beta's 200 on alpha")
    killed = time.monotonic()
    beta.send(signal.SIGKILL)
    await wait_for(lambda: lacks_number(alpha, "200"), timeout=2 + 1 + 2, interval=0.05, what="200 expiry on alpha")
    expired_after = time.monotonic() - killed
    # Not a revoke: a killed process cannot revoke. The lease ran out, within TTL + 1 s.
    assert 1.0 < expired_after <= 2 + 1, expired_after
    assert await alpha.member_ids() == ["alpha"]


async def test_a_restarted_server_joins_last(group: Group) -> None:
    alpha = await group.start("alpha", ["500"])
    await group.start("beta", ["500"])
    gamma = await group.start("gamma")
    await wait_for(lambda: owner_is(gamma, "500", "alpha"), what="500 to alpha on gamma")
    await alpha.stop()
    await wait_for(lambda: owner_is(gamma, "500", "beta"), what="500 to beta on gamma")
    alpha_again = group.server("alpha", ["500"], file_name="alpha-again.yaml")
    await alpha_again.start()
    await wait_for(lambda: member_ids_are(gamma, ["beta", "gamma", "alpha"]), what="alpha listed last")
    # alpha now joined after beta: beta keeps 500 on gamma.
    assert (await gamma.owners())["500"] == "beta"


async def test_runtime_upsert_and_remove_reach_peers_and_watch_streams(group: Group) -> None:
    alpha = await group.start("alpha", ["100"], departments=[{"id": "sales", "name": "Sales"}])
    beta = await group.start("beta", ["200"])
    await wait_for(lambda: has_numbers(beta, {"100"}), what="100 on beta")

    stream = beta.stub.WatchNumbers(pb.WatchNumbersRequest())
    snapshot: dict[str, pb.Route] = {}
    while True:
        message = await next_message(stream)
        snapshot.update({r.number: r for r in message.upserted})
        if message.synced:
            break
    assert set(snapshot) == {"100", "200"}

    response = await alpha.stub.UpsertNumber(
        pb.UpsertNumberRequest(number="150", display_name="New hire", department_id="sales")
    )
    assert response.route.local and response.route.server_id == "alpha"
    change = await next_message(stream)
    assert [(r.number, r.display_name, r.department_id, r.server_id) for r in change.upserted] == [
        ("150", "New hire", "sales", "alpha")
    ]
    assert change.synced

    await alpha.stub.RemoveNumber(pb.RemoveNumberRequest(number="100"))
    change = await next_message(stream)
    assert list(change.removed) == ["100"]
    assert await beta.resolve("100") is None
    stream.cancel()


async def test_watch_members_reports_join_and_leave(group: Group) -> None:
    alpha = await group.start("alpha")
    stream = alpha.stub.WatchMembers(pb.WatchMembersRequest())
    first = await next_message(stream)
    assert first.synced and first.connected
    assert [m.server_id for m in first.upserted] == ["alpha"]
    beta = await group.start(
        "beta", ["200"], listen={"trunk": "127.0.0.1:5071"}, extra={"trunk": {"secret": "a-group-secret-0123456"}}
    )
    joined = await next_message(stream)
    assert [m.server_id for m in joined.upserted] == ["beta"]
    assert joined.upserted[0].registry_address == beta.address
    assert joined.upserted[0].trunk_address == "127.0.0.1:5071"
    assert (await beta.resolve("200")).trunk_address == "127.0.0.1:5071"  # type: ignore[union-attr]
    await beta.stop()
    left = await next_message(stream)
    assert list(left.left) == ["beta"]
    stream.cancel()


async def test_bad_arguments_get_invalid_argument_with_a_reason(group: Group) -> None:
    from services.runtime import error_info

    alpha = await group.start("alpha", ["100"])
    invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    stub = alpha.stub
    cases: list[tuple[Awaitable[object], grpc.StatusCode, str]] = [
        (stub.ResolveNumber(pb.ResolveNumberRequest(number="12a")), invalid, "INVALID_NUMBER"),
        (stub.ResolveNumber(pb.ResolveNumberRequest(number="")), invalid, "INVALID_NUMBER"),
        (stub.ResolveNumber(pb.ResolveNumberRequest(number="4242")), not_found, "NUMBER_NOT_FOUND"),
        (stub.UpsertNumber(pb.UpsertNumberRequest(number="101", department_id="nope")), invalid, "UNKNOWN_DEPARTMENT"),
        (stub.UpsertNumber(pb.UpsertNumberRequest(number="1" * 33)), invalid, "INVALID_NUMBER"),
        (stub.UpsertNumber(pb.UpsertNumberRequest(number="101", kind=99)), invalid, "INVALID_KIND"),  # type: ignore[arg-type]
        (stub.RemoveNumber(pb.RemoveNumberRequest(number="999")), not_found, "NUMBER_NOT_OWNED"),
    ]
    for call, code, reason in cases:
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == code, (reason, exc)
            info = error_info(exc)
            assert info is not None and info.reason == reason and info.domain == "pbxmesh.io"
            assert exc.details()
        else:
            raise AssertionError(f"expected {code} {reason}")
    # The server is still fine after all of that.
    assert (await alpha.owners()) == {"100": "alpha"}


async def test_list_numbers_pages_and_filters(group: Group) -> None:
    from services.runtime import error_info

    alpha = await group.start("alpha", [str(n) for n in range(100, 125)])
    beta = await group.start("beta", [str(n) for n in range(200, 210)])
    await wait_for(lambda: has_numbers(beta, {"100", "124"}), what="alpha's numbers on beta")
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await beta.stub.ListNumbers(pb.ListNumbersRequest(page_size=7, page_token=token))
        assert len(page.routes) <= 7
        seen += [r.number for r in page.routes]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 5 and seen == sorted(seen) and len(seen) == 35 == len(set(seen))
    only_alpha = await beta.stub.ListNumbers(pb.ListNumbersRequest(server_id="alpha"))
    assert [r.number for r in only_alpha.routes] == [str(n) for n in range(100, 125)]
    try:
        await alpha.stub.ListNumbers(pb.ListNumbersRequest(page_size=10_001))
    except grpc.aio.AioRpcError as exc:
        info = error_info(exc)
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and info is not None and info.reason == "INVALID_PAGE"
    else:
        raise AssertionError("a page of 10,001 was accepted")
