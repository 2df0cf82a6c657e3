"""External routes through the registry: router servers publish them lease-bound, every server
sees the merged list (priority, then join order), resolve answers for external numbers, and a
router server that dies takes its routes with it."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from typing import Any

import grpc
import pytest

from pbxmesh.registry.v1 import registry_pb2 as pb
from tests.support import Group, has_numbers, next_message, wait_for

MOBILE = r"^8\d{10}$"


def _router(provider: str, priority: int, extra_routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "listen": {"registry": "127.0.0.1:0", "sip": "127.0.0.1:0"},
        "extra": {
            "providers": [{"name": provider, "address": "127.0.0.1:5999"}],
            "routes": [
                # A local dialing rule (no provider): never published.
                {"pattern": r"^\d{7}$", "prepend": "+7495"},
                {"pattern": MOBILE, "provider": provider, "strip": 1, "prepend": "+7", "priority": priority},
                *(extra_routes or []),
            ],
        },
    }


def _routes(response: Any) -> list[tuple[str, str, str, int]]:
    return [(r.pattern, r.server_id, r.provider, r.priority) for r in response.routes]


async def _routes_are(server: Any, wanted: list[tuple[str, str, str, int]]) -> bool:
    return _routes(await server.stub.ListExternalRoutes(pb.ListExternalRoutesRequest())) == wanted


async def test_router_servers_publish_routes_merged_by_priority_then_join_order(group: Group) -> None:
    alpha = await group.start("alpha", ["100"])
    r1 = await group.start("r1", ["200"], **_router("carrier-a", 10))
    r2 = await group.start(
        "r2", ["300"], **_router("carrier-b", 10, [{"pattern": r"^\+\d+$", "provider": "carrier-b", "priority": 5}])
    )
    merged = [
        (r"^\+\d+$", "r2", "carrier-b", 5),
        (MOBILE, "r1", "carrier-a", 10),  # same priority as r2's: r1 joined first
        (MOBILE, "r2", "carrier-b", 10),
    ]
    for server in (alpha, r1, r2):
        await wait_for(lambda s=server: _routes_are(s, merged), what=f"merged routes on {server.id}")  # type: ignore[misc]
    listed = await r1.stub.ListExternalRoutes(pb.ListExternalRoutesRequest())
    assert listed.connected
    local_and_live = [(r.server_id, r.local, r.live) for r in listed.routes]
    assert local_and_live == [("r2", False, True), ("r1", True, True), ("r2", False, True)]
    assert all(r.trunk_address == "" and r.join_revision > 0 for r in listed.routes)

    # An external number resolves to the routes that match it, best first; internal ones as before.
    resolved = await alpha.stub.ResolveNumber(pb.ResolveNumberRequest(number="89161234567"))
    assert not resolved.HasField("route")
    assert [(r.server_id, r.provider) for r in resolved.external] == [("r1", "carrier-a"), ("r2", "carrier-b")]
    resolved = await alpha.stub.ResolveNumber(pb.ResolveNumberRequest(number="+74951234567"))
    assert [r.server_id for r in resolved.external] == ["r2"]
    await wait_for(lambda: has_numbers(alpha, {"100", "200", "300"}), what="the plan on alpha")
    resolved = await alpha.stub.ResolveNumber(pb.ResolveNumberRequest(number="200"))
    assert resolved.route.server_id == "r1" and not resolved.external
    # A 7-digit number matches only r1's local dialing rule, which is not a route of the group.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await alpha.stub.ResolveNumber(pb.ResolveNumberRequest(number="1234567"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no external route" in (refused.value.details() or "")

    # The CLI lists the same, as JSON and as a table.
    cli = [sys.executable, "-m", "services.cli", "routes", "--registry", alpha.address]
    shown = await asyncio.to_thread(subprocess.run, [*cli, "--json"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    routes = json.loads(shown.stdout)["routes"]
    assert [(r["pattern"], r["serverId"], r["provider"], r["priority"], r["live"]) for r in routes] == [
        (p, s, prov, prio, True) for p, s, prov, prio in merged
    ]
    table = await asyncio.to_thread(subprocess.run, cli, capture_output=True, text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["PATTERN", "SERVER", "PROVIDER", "PRIORITY", "LIVE"]
    assert lines[2].split() == [MOBILE, "r1", "carrier-a", "10", "yes"]
    resolve = [sys.executable, "-m", "services.cli", "resolve", "89161234567", "--registry", alpha.address]
    shown = await asyncio.to_thread(subprocess.run, resolve, capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert "external" in shown.stdout and "carrier-a" in shown.stdout


async def test_a_router_server_that_dies_takes_its_routes_with_it(group: Group) -> None:
    alpha = await group.start("alpha", ["100"])
    r1 = await group.start("r1", ["200"], lease_ttl=2, **_router("carrier-a", 10))
    await group.start("r2", ["300"], **_router("carrier-b", 20))
    both = [(MOBILE, "r1", "carrier-a", 10), (MOBILE, "r2", "carrier-b", 20)]
    await wait_for(lambda: _routes_are(alpha, both), what="both routers' routes on alpha")
    stream = alpha.stub.WatchExternalRoutes(pb.WatchExternalRoutesRequest())
    try:
        first = await next_message(stream)
        assert first.connected and _routes(first) == both
        r1.send(signal.SIGKILL)  # no revoke: the lease runs out
        after = await next_message(stream, timeout=10)
        assert _routes(after) == [(MOBILE, "r2", "carrier-b", 20)]
    finally:
        stream.cancel()
    resolved = await alpha.stub.ResolveNumber(pb.ResolveNumberRequest(number="89161234567"))
    assert [r.server_id for r in resolved.external] == ["r2"]


async def test_a_server_cut_off_lists_only_its_own_routes(group: Group) -> None:
    r1 = await group.start("r1", ["200"], **_router("carrier-a", 10))
    r2 = await group.start("r2", ["300"], lease_ttl=30, **_router("carrier-b", 20))
    both = [(MOBILE, "r1", "carrier-a", 10), (MOBILE, "r2", "carrier-b", 20)]
    await wait_for(lambda: _routes_are(r1, both), what="both routers' routes on r1")
    r2.send(signal.SIGTERM)  # leaves: revokes its lease, its routes go at once
    await wait_for(lambda: _routes_are(r1, [(MOBILE, "r1", "carrier-a", 10)]), timeout=10, what="r2's routes gone")
    assert await r2.wait_exit() == 0
