"""The plain-text probe port: its config (``probes``) and what a GrpcHost serves there."""

from __future__ import annotations

import textwrap
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.runtime.config import ConfigError, ProbesSection, load_config
from services.runtime.embedded_etcd import free_port
from services.runtime.grpc_server import GrpcHost

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ProbesSection:
    path = tmp_path / "server.yaml"
    path.write_text("server: {id: alpha}\n" + textwrap.dedent(text))
    return load_config(path, environ=environ or {}).probes


def test_probes_are_off_by_default_and_take_an_address_per_service(tmp_path: Path) -> None:
    assert load(tmp_path, "") == ProbesSection()
    probes = load(
        tmp_path,
        """\
        listen: {callstate: "0.0.0.0:50071"}
        probes: {registry: "0.0.0.0:50052", callstate: "0.0.0.0:50072", media: "[::]:50082"}
        """,
        {"PBXMESH_PROBES_SIPGW": "127.0.0.1:50062"},
    )
    assert probes == ProbesSection("0.0.0.0:50052", "127.0.0.1:50062", "0.0.0.0:50072", "[::]:50082")


@pytest.mark.parametrize("value", ["nowhere", "127.0.0.1:0x10", "127.0.0.1:70000", ":50072"])
def test_a_bad_probe_address_names_its_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f'probes: {{callstate: "{value}"}}\n')
    assert str(info.value).startswith("probes.callstate:")


def test_the_probe_port_is_not_the_service_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, 'listen: {registry: "127.0.0.1:6000"}\nprobes: {registry: "127.0.0.1:6000"}\n')
    assert str(info.value).startswith("probes.registry:")


async def check(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return int(answer.status)


async def test_the_probe_port_answers_the_hosts_health_in_plain_text_and_nothing_else() -> None:
    host = GrpcHost("127.0.0.1:0", probe=f"127.0.0.1:{free_port()}")
    host.bind()
    await host.start()
    try:
        probe = host.probe_address
        assert probe and probe != host.address
        assert await check(probe) == SERVING
        # One health servicer for both ports: a part flipped by the service shows on the probe port.
        await host.set_health("pbxmesh.registry.v1.Group", False)
        assert await check(probe, "pbxmesh.registry.v1.Group") == NOT_SERVING
        async with grpc.aio.insecure_channel(probe) as channel:
            other: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/pbxmesh.registry.v1.RegistryService/ListNumbers"
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await other(b"", timeout=3)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
            # Reflection lists what the port serves, not what the main port does.
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for reply in stub.ServerReflectionInfo(iter([request])):
                names = {s.name for s in reply.list_services_response.service}
                break
        assert names == {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
        # Entering the drain shows there too, before the main port stops.
        await host.health.enter_graceful_shutdown()
        assert await check(probe) == NOT_SERVING
    finally:
        await host.stop(0)
    async with grpc.aio.insecure_channel(probe) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as stopped:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    assert stopped.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_host_without_a_probe_port_stops_as_before() -> None:
    host = GrpcHost("127.0.0.1:0")
    await host.start()
    assert host.probe_address == ""
    assert await check(host.address) == SERVING
    await host.stop(0)
