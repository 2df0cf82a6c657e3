"""A server with mutual TLS on every gRPC port answers health checks in plain text on its probe
ports (``probes``), as Kubernetes' gRPC probes need, and nothing else there."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pbxmesh.registry.v1 import registry_pb2 as pb
from pbxmesh.registry.v1 import registry_pb2_grpc as pb_grpc
from tests.harness.config import loopback
from tests.harness.servers import Group
from tests.harness.site import Site, Spec, running_sites
from tests.harness.tls import channel

ALICE = ("100", "alice-pw-100")
SERVICES = ("registry", "sipgw", "callstate", "media")


@pytest.fixture
async def site(group: Group) -> AsyncIterator[tuple[Site, dict[str, str]]]:
    probes = {name: loopback() for name in SERVICES}
    spec = Spec(ALICE, "sales", tls=True, media=True, extra={"probes": probes})
    async with running_sites(group, {"alpha": spec}) as made:
        yield made["alpha"], probes


async def check(address: str) -> tuple[grpc.StatusCode, int]:
    """Health/Check over a plain channel: the status of the call, and the serving status."""
    async with grpc.aio.insecure_channel(address) as plain:
        try:
            answer = await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.aio.AioRpcError as error:
            return error.code(), 0
    return grpc.StatusCode.OK, int(answer.status)


async def test_probe_ports_answer_health_in_plain_text_and_the_main_ports_still_take_tls_only(
    site: tuple[Site, dict[str, str]],
) -> None:
    alpha, probes = site
    main = {
        "registry": alpha.registry.address,
        "sipgw": alpha.gateway.api,
        "callstate": alpha.callstate.address,
        "media": alpha.media.address,
    }
    for name in SERVICES:
        assert await check(probes[name]) == (grpc.StatusCode.OK, health_pb2.HealthCheckResponse.SERVING), name
        # A plain client gets nowhere on the main port: its handshake needs a client certificate.
        assert (await check(main[name]))[0] == grpc.StatusCode.UNAVAILABLE, name
    # The registry's API is not on its probe port, though it is on its main port (over TLS).
    async with grpc.aio.insecure_channel(probes["registry"]) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.RegistryServiceStub(plain).ListNumbers(pb.ListNumbersRequest(), timeout=3)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    async with channel(main["registry"]) as secure:
        listed = await pb_grpc.RegistryServiceStub(secure).ListNumbers(pb.ListNumbersRequest(), timeout=3)
    assert "100" in {r.number for r in listed.routes}
