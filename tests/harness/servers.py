"""The three services as tests drive them: a registry ``Server`` (and a ``Group`` of them), a
``Gateway`` and a ``CallState``, each one ``ServiceProcess`` at a time (a restart makes a new one)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pbxmesh.registry.v1 import registry_pb2 as pb
from pbxmesh.registry.v1 import registry_pb2_grpc as pb_grpc
from pbxmesh.sipgw.v1 import sipgw_pb2 as gw_pb
from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as gw_grpc
from services.runtime.config import load_config
from services.runtime.embedded_etcd import EmbeddedEtcd
from tests.harness.config import write_config
from tests.harness.process import ServiceProcess, child_env
from tests.harness.tls import channel as tls_channel


class Server:
    """One registry process."""

    def __init__(self, server_id: str, config_path: Path, env: dict[str, str]):
        self.id = server_id
        self.config_path = config_path
        self.env = env
        self.process: ServiceProcess | None = None
        self.address = ""
        self._channel: grpc.aio.Channel | None = None

    @property
    def log(self) -> list[str]:
        return self.process.log if self.process is not None else []

    async def start(self, wait_ready: bool = True, timeout: float = 15.0) -> Server:
        """Starts the process; with ``wait_ready`` waits until it serves (it has read the group)."""
        self.process = ServiceProcess("registry", self.config_path, name=self.id, env=self.env).spawn()
        if wait_ready:
            await self.process.wait_ready(timeout)
            self.address = self.process.address
            if self._channel is not None:
                await self._channel.close()
            self._channel = tls_channel(self.address)
        return self

    @property
    def stub(self) -> pb_grpc.RegistryServiceAsyncStub:
        assert self._channel is not None, f"{self.id} is not running"
        return pb_grpc.RegistryServiceStub(self._channel)  # an AsyncStub, as the channel is grpc.aio

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        assert self._channel is not None
        return health_pb2_grpc.HealthStub(self._channel)

    async def health_of(self, service: str) -> int:
        response = await self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return int(response.status)

    async def numbers(self) -> dict[str, pb.Route]:
        """The whole merged plan, page by page."""
        result: dict[str, pb.Route] = {}
        token = ""
        while True:
            page = await self.stub.ListNumbers(pb.ListNumbersRequest(page_token=token), timeout=5)
            result.update((r.number, r) for r in page.routes)
            token = page.next_page_token
            if not token:
                return result

    async def owners(self) -> dict[str, str]:
        return {n: r.server_id for n, r in (await self.numbers()).items()}

    async def members(self) -> pb.ListMembersResponse:
        return await self.stub.ListMembers(pb.ListMembersRequest(), timeout=5)

    async def member_ids(self) -> list[str]:
        return [m.server_id for m in (await self.members()).members]

    async def resolve(self, number: str) -> pb.Route | None:
        try:
            response = await self.stub.ResolveNumber(pb.ResolveNumberRequest(number=number), timeout=5)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return response.route

    def send(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send(sig)

    async def wait_exit(self, timeout: float = 10.0) -> int:
        assert self.process is not None
        return await self.process.wait_exit(timeout)

    async def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL."""
        if self.process is not None:
            await self.process.stop()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


async def has_numbers(server: Server, numbers: set[str]) -> bool:
    return numbers <= set(await server.numbers())


async def lacks_number(server: Server, number: str) -> bool:
    return number not in await server.numbers()


async def owner_is(server: Server, number: str, owner: str) -> bool:
    return (await server.owners()).get(number) == owner


async def member_ids_are(server: Server, ids: list[str]) -> bool:
    return await server.member_ids() == ids


async def registry_has_numbers(address: str, numbers: set[str]) -> bool:
    """Whether the registry at ``address`` resolves every one of ``numbers`` (for code without a
    ``Server``: a bench, a script)."""
    async with tls_channel(address) as channel:
        stub = pb_grpc.RegistryServiceStub(channel)
        for number in numbers:
            try:
                await stub.ResolveNumber(pb.ResolveNumberRequest(number=number), timeout=5)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return False
                raise
    return True


class Group:
    """Registry processes of one group, each with a config file written by the test."""

    def __init__(self, etcd_endpoint: str, tmp: Path, name: str, etcd: EmbeddedEtcd | None = None):
        self.etcd_endpoint = etcd_endpoint
        self.etcd = etcd
        self.tmp = tmp
        self.name = name
        self.servers: list[Server] = []

    def server(
        self,
        server_id: str,
        numbers: list[str | dict[str, str]] = (),  # type: ignore[assignment]
        departments: list[dict[str, str]] | None = None,
        lease_ttl: int = 5,
        name: str | None = None,
        endpoint: str | None = None,
        connector: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        file_name: str | None = None,
        listen: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Server:
        """A server's config written (each port left at 0 given a free one), not started."""
        entries = [{"number": n, "name": f"{server_id}-{n}"} if isinstance(n, str) else n for n in numbers]
        document = {
            "server": {"id": server_id, "name": name or f"{server_id.title()} office"},
            "connector": {
                "endpoints": [endpoint or self.etcd_endpoint],
                "group": self.name,
                "lease_ttl": lease_ttl,
                **(connector or {}),
            },
            "listen": {"registry": "127.0.0.1:0", **(listen or {})},
            "numbering": {"departments": departments or [], "numbers": entries},
            **(extra or {}),
        }
        path = write_config(self.tmp / (file_name or f"{server_id}-{len(self.servers)}.yaml"), document)
        server = Server(server_id, path, child_env(env))
        self.servers.append(server)
        return server

    async def start(self, server_id: str, *args: Any, **kwargs: Any) -> Server:
        return await self.server(server_id, *args, **kwargs).start()

    async def close(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers), return_exceptions=True)


class Gateway:
    """A running SIP gateway: SIP at ``sip`` (UDP and TCP), its gRPC API at ``api``."""

    def __init__(self, process: ServiceProcess):
        self.process = process
        listen = load_config(process.config, environ=process.env).listen
        self.sip = listen.sip
        self.sip_port = int(listen.sip.rpartition(":")[2])
        self.sips = listen.sips  # phones' SIP over TLS, when the server has tls
        self.api = listen.sipgw

    @property
    def log(self) -> list[str]:
        return self.process.log

    async def registrations(self) -> dict[str, list[gw_pb.Contact]]:
        async with tls_channel(self.api) as channel:
            stub = gw_grpc.SipGatewayServiceStub(channel)
            response = await stub.ListRegistrations(gw_pb.ListRegistrationsRequest(), timeout=5)
        return {r.number: list(r.contacts) for r in response.registrations}


async def start_gateway(path: Path, env: dict[str, str] | None = None) -> Gateway:
    """``pbxmesh serve sipgw -c PATH``, once it serves (its SIP sockets are open by then)."""
    process = ServiceProcess("sipgw", path, env=child_env(env))
    return Gateway(await process.start())


async def stop_gateway(gateway: Gateway) -> None:
    await gateway.process.stop()


class Service:
    """One of a server's services beside its registry; ``stop`` and ``start`` again restart it
    on the same address."""

    name = ""

    def __init__(self, path: Path, env: dict[str, str] | None = None):
        self.path = path
        self.env = env
        self.process: ServiceProcess | None = None
        self.address = ""

    @property
    def log(self) -> list[str]:
        return self.process.log if self.process is not None else []

    async def start(self) -> None:
        self.process = await ServiceProcess(self.name, self.path, env=child_env(self.env)).start()
        self.address = self.process.address

    async def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
            await self.process.wait_exit()
        else:
            await self.process.stop()


class CallState(Service):
    name = "callstate"


class Media(Service):
    """A media service; ``recordings`` is its recording folder."""

    name = "media"

    def __init__(self, path: Path, env: dict[str, str] | None = None):
        super().__init__(path, env)
        self.recordings = Path(load_config(path, environ=child_env(env)).recording.dir)


__all__ = [
    "CallState",
    "Media",
    "Gateway",
    "Group",
    "Server",
    "has_numbers",
    "lacks_number",
    "member_ids_are",
    "owner_is",
    "start_gateway",
    "stop_gateway",
]
