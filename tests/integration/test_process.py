"""The process around the registry: health, reflection, the CLI, tracing, bad config at start."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pbxmesh.registry.v1 import registry_pb2 as pb
from services.registry import GROUP_HEALTH
from services.runtime.grpc_server import SERVING
from tests.otlp import otlp_receiver
from tests.support import REPO, Group, child_env, has_numbers, wait_for


async def test_health_and_reflection(group: Group) -> None:
    alpha = await group.start("alpha", ["100"])
    assert await alpha.health_of("") == SERVING
    assert await alpha.health_of("pbxmesh.registry.v1.RegistryService") == SERVING
    await wait_for(lambda: _serving(alpha.health_of(GROUP_HEALTH)), what="group health")

    async with grpc.aio.insecure_channel(alpha.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        services = set()
        async for response in stub.ServerReflectionInfo(ask()):
            services = {s.name for s in response.list_services_response.service}
    assert {"pbxmesh.registry.v1.RegistryService", "grpc.health.v1.Health"} <= services


async def _serving(check: Any) -> bool:
    return bool(await check == SERVING)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True, text=True, timeout=30, env=child_env(), cwd=REPO,
    )  # fmt: skip


async def test_cli_members_numbers_resolve(group: Group) -> None:
    alpha = await group.start("alpha", ["100", "555"], name="Alpha HQ")
    beta = await group.start("beta", ["200", "555"])
    await wait_for(lambda: has_numbers(alpha, {"100", "200", "555"}), what="plan on alpha")

    members = await asyncio.to_thread(_cli, "members", "--registry", beta.address, "--json")
    assert members.returncode == 0, members.stderr
    data = json.loads(members.stdout)
    assert [m["serverId"] for m in data["members"]] == ["alpha", "beta"]
    assert data["connected"] is True

    table = await asyncio.to_thread(_cli, "members", "--registry", beta.address)
    assert "Alpha HQ" in table.stdout and "beta *" in table.stdout

    numbers = await asyncio.to_thread(_cli, "numbers", "--registry", beta.address)
    lines = {line.split()[0]: line for line in numbers.stdout.splitlines()[1:]}
    assert set(lines) == {"100", "200", "555"}
    assert lines["555"].rstrip().endswith("beta *")

    conflicts = await asyncio.to_thread(_cli, "numbers", "--conflicts", "--registry", beta.address, "--json")
    conflict = json.loads(conflicts.stdout)["conflicts"][0]
    assert conflict["number"] == "555" and conflict["winner"]["serverId"] == "beta"
    assert conflict["reason"] == "CONFLICT_REASON_OWN_NUMBER"

    resolved = await asyncio.to_thread(_cli, "resolve", "100", "--registry", beta.address)
    assert resolved.returncode == 0
    assert "alpha (Alpha HQ)" in resolved.stdout

    missing = await asyncio.to_thread(_cli, "resolve", "4242", "--registry", beta.address)
    assert missing.returncode == 1 and "NUMBER_NOT_FOUND" in missing.stderr

    down = await asyncio.to_thread(_cli, "members", "--registry", "127.0.0.1:1")
    assert down.returncode == 2 and "did not answer" in down.stderr


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        ({"server": {"id": "Alpha"}}, "server.id: 'Alpha' does not match"),
        ({"connector": {"lease_ttl": 1}}, "connector.lease_ttl: 1 is below the minimum"),
        ({"connector": {"colour": "red"}}, "unknown key connector.colour"),
        ({"numbering": {"numbers": [{"number": "1x"}]}}, "numbering.numbers[0].number: '1x'"),
        ({"numbering": {"numbers": [{"number": "1", "department": "nope"}]}}, "unknown department 'nope'"),
        (
            {"numbering": {"numbers": [{"number": "1"}, {"number": "1"}]}},
            "numbering.numbers[1].number: duplicate own number '1'",
        ),
    ],
)
def test_bad_config_fails_at_start_naming_the_key(tmp_path: Path, mutation: dict[str, Any], message: str) -> None:
    import yaml

    document: dict[str, Any] = {"server": {"id": "alpha"}, "listen": {"registry": "127.0.0.1:0"}}
    for key, value in mutation.items():
        document[key] = {**document.get(key, {}), **value}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    result = _cli("serve", "registry", "-c", str(path))
    assert result.returncode == 2
    assert message in result.stderr, result.stderr


def test_env_override_is_validated_too(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("server: {id: alpha}\nlisten: {registry: '127.0.0.1:0'}\n")
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "serve", "registry", "-c", str(path)],
        capture_output=True, text=True, timeout=30, cwd=REPO,
        env=child_env({"PBXMESH_SERVER_ID": "BAD_ID", "PBXMESH_CONNECTOR_PASSWORD": "hunter2-secret"}),
    )  # fmt: skip
    assert result.returncode == 2
    assert "server.id: 'BAD_ID'" in result.stderr
    assert "hunter2-secret" not in result.stderr


async def test_traces_reach_an_otlp_receiver_without_health_checks(group: Group) -> None:
    async with otlp_receiver() as (receiver, env):
        alpha = await group.start(
            "alpha",
            ["100"],
            env=env,
            connector={"username": "", "password": ""},
        )
        await alpha.health_of("")
        await alpha.stub.ResolveNumber(pb.ResolveNumberRequest(number="100"))

        async def resolved() -> bool:
            return any(span.name.endswith("RegistryService/ResolveNumber") for span in receiver.spans)

        await wait_for(resolved, timeout=10, what="the ResolveNumber span")
        _, attributes, resource, _ = next(s for s in receiver.spans if s.name.endswith("/ResolveNumber"))
        assert attributes["pbxmesh.number"] == "100"
        assert attributes["pbxmesh.route.server_id"] == "alpha"
        assert resource["service.name"] == "pbxmesh-registry"
        assert resource["pbxmesh.server.id"] == "alpha"
        assert not any("Health" in s.name or "etcdserverpb" in s.name for s in receiver.spans)
