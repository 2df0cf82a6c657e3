"""Faults: a server cut off from etcd, etcd restarting, etcd with auth."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from pbxmesh.registry.v1 import registry_pb2 as pb
from services.registry import GROUP_HEALTH
from services.runtime.embedded_etcd import EmbeddedEtcd, etcd_binary
from services.runtime.grpc_server import NOT_SERVING, SERVING
from tests.support import (
    Group,
    TcpProxy,
    has_numbers,
    lacks_number,
    member_ids_are,
    next_message,
    owner_is,
    wait_for,
)


async def test_cut_off_server_keeps_own_numbers_drops_others_then_rejoins_last(group: Group) -> None:
    ttl = 3
    alpha = await group.start("alpha", ["100", "888"])
    proxy = TcpProxy(int(group.etcd_endpoint.rpartition(":")[2]))
    await proxy.start()
    try:
        beta = await group.start("beta", ["200", "777"], lease_ttl=ttl, endpoint=proxy.endpoint)
        gamma = await group.start("gamma", ["300", "777", "888"])
        await wait_for(lambda: has_numbers(beta, {"100", "200", "300", "777", "888"}), what="full plan on beta")
        await wait_for(lambda: has_numbers(alpha, {"100", "200", "300", "777", "888"}), what="full plan on alpha")
        assert (await alpha.owners())["777"] == "beta"  # beta joined before gamma
        assert await beta.health_of(GROUP_HEALTH) == SERVING
        stream = beta.stub.WatchNumbers(pb.WatchNumbersRequest())
        snapshot = await next_message(stream)
        assert snapshot.synced and snapshot.connected and len(snapshot.upserted) == 5

        proxy.cut()
        cut_at = time.monotonic()
        await wait_for(
            lambda: member_ids_are(beta, ["beta"]),
            timeout=ttl + 2,
            interval=0.05,
            what="beta to drop the others",
        )
        dropped_after = time.monotonic() - cut_at
        # The last keepalive that got through was sent before the cut: no later than TTL after it.
        assert dropped_after <= ttl + 0.5, dropped_after
        members = await beta.members()
        assert not members.connected
        assert await beta.owners() == {"200": "beta", "777": "beta"}
        assert await beta.resolve("100") is None
        assert await beta.health_of(GROUP_HEALTH) == NOT_SERVING
        assert await beta.health_of("") == SERVING
        # Its numbers watchers heard the others go, then that the view is no longer the group's.
        dropped = await next_message(stream)
        assert sorted(dropped.removed) == ["100", "300", "888"] and dropped.connected
        alone = await next_message(stream)
        assert not alone.connected and not alone.upserted and not alone.removed
        # Its own plan can still change while it is alone.
        await beta.stub.UpsertNumber(pb.UpsertNumberRequest(number="250", display_name="Added alone"))

        # The others see beta's lease run out.
        await wait_for(lambda: lacks_number(alpha, "200"), timeout=ttl + 2, what="beta gone from alpha")
        assert (await alpha.owners())["777"] == "gamma"

        proxy.restore()
        await wait_for(lambda: member_ids_are(gamma, ["alpha", "gamma", "beta"]), timeout=10, what="beta back, last")
        await wait_for(lambda: has_numbers(beta, {"100", "300", "888"}), timeout=10, what="beta to resync")
        assert (await beta.members()).connected
        assert await beta.health_of(GROUP_HEALTH) == SERVING
        messages = [await next_message(stream) for _ in range(3)]  # the own upsert, the others, connected
        assert messages[-1].connected and not messages[-1].upserted
        stream.cancel()
        # beta now joined after gamma, so gamma keeps 777 elsewhere; beta's lone addition is published.
        await wait_for(lambda: owner_is(alpha, "250", "beta"), what="250 published after the rejoin")
        assert (await alpha.owners())["777"] == "gamma"
        assert (await beta.owners())["777"] == "beta"
        assert any("cut off from the group" in line for line in beta.log)
    finally:
        await proxy.close()


async def test_etcd_restart_is_survived_without_restarting_services(isolated_group: Group) -> None:
    group = isolated_group
    assert group.etcd is not None
    alpha = await group.start("alpha", ["100"], lease_ttl=5)
    beta = await group.start("beta", ["200"], lease_ttl=5)
    await wait_for(lambda: has_numbers(alpha, {"100", "200"}), what="beta on alpha")

    # A short restart: leases survive in etcd, watches break and are read again.
    group.etcd.stop()
    group.etcd.start()
    await alpha.stub.UpsertNumber(pb.UpsertNumberRequest(number="101", display_name="After restart"))
    await wait_for(lambda: owner_is(beta, "101", "alpha"), timeout=10, what="101 on beta after the restart")

    # A long outage: both are cut off, then both rejoin and see each other again.
    group.etcd.stop()
    await wait_for(lambda: member_ids_are(alpha, ["alpha"]), timeout=8, what="alpha cut off")
    assert await alpha.owners() == {"100": "alpha", "101": "alpha"}
    group.etcd.start()
    await wait_for(lambda: has_numbers(alpha, {"100", "101", "200"}), timeout=15, what="alpha to rejoin")
    await wait_for(lambda: has_numbers(beta, {"100", "101", "200"}), timeout=15, what="beta to rejoin")
    assert alpha.process is not None and alpha.process.returncode is None
    assert beta.process is not None and beta.process.returncode is None


def _etcdctl(endpoint: str, *args: str, user: str | None = None) -> None:
    command = [str(etcd_binary().with_name("etcdctl")), f"--endpoints={endpoint}"]
    if user:
        command.append(f"--user={user}")
    subprocess.run([*command, *args], check=True, capture_output=True, timeout=20)


async def test_etcd_auth_with_a_user_limited_to_the_group_prefix(own_etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    group = Group(own_etcd.endpoint, tmp_path, name="authgroup", etcd=own_etcd)
    endpoint = own_etcd.endpoint
    root_password = "r00t-Secret-1"
    password = "s3cret-Alpha-9"
    _etcdctl(endpoint, "user", "add", f"root:{root_password}")
    _etcdctl(endpoint, "user", "grant-role", "root", "root")
    _etcdctl(endpoint, "role", "add", "pbxmesh-authgroup")
    _etcdctl(
        endpoint,
        "role",
        "grant-permission",
        "pbxmesh-authgroup",
        "--prefix=true",
        "readwrite",
        "/pbxmesh/authgroup/",
    )
    for user in ("alpha", "beta"):
        _etcdctl(endpoint, "user", "add", f"{user}:{password}")
        _etcdctl(endpoint, "user", "grant-role", user, "pbxmesh-authgroup")
    _etcdctl(endpoint, "auth", "enable")
    try:
        alpha = await group.start("alpha", ["100"], connector={"username": "alpha", "password": password})
        beta = await group.start("beta", ["200"], connector={"username": "beta", "password": password})
        await wait_for(lambda: has_numbers(alpha, {"100", "200"}), what="beta on alpha with auth")

        # etcd forgets its tokens when it restarts: the servers log in again by themselves.
        own_etcd.stop()
        own_etcd.start()
        await alpha.stub.UpsertNumber(pb.UpsertNumberRequest(number="101"))
        await wait_for(lambda: owner_is(beta, "101", "alpha"), timeout=15, what="101 on beta after re-login")

        intruder = group.server("gamma", ["300"], connector={"username": "alpha", "password": "wrong-Pass-7"})
        await intruder.start(wait_ready=False)
        code = await intruder.wait_exit(15)
        text = "".join(intruder.log)
        assert code == 3, text
        assert "rejected the login of user 'alpha'" in text
        for server in (alpha, beta, intruder):
            logged = "".join(server.log)
            assert password not in logged and "wrong-Pass-7" not in logged
    finally:
        await group.close()
