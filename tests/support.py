"""Helpers for tests that run registry processes: start, stop, kill, ask, wait, cut off."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pbxmesh.registry.v1 import registry_pb2 as pb
from pbxmesh.registry.v1 import registry_pb2_grpc as pb_grpc
from services.runtime.embedded_etcd import EmbeddedEtcd

READY = re.compile(r"listening on (\S+), group")
REPO = Path(__file__).resolve().parent.parent


async def wait_for(
    check: Callable[[], Awaitable[Any]],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.02,
) -> Any:
    """Polls ``check`` until it returns something truthy; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


async def next_message(stream: Any, timeout: float = 5.0) -> Any:
    """The next message of a server stream; fails the test if the stream ends or stays silent."""
    message = await asyncio.wait_for(stream.read(), timeout)
    assert message is not grpc.aio.EOF, "the stream ended"
    return message


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without PBXMESH_* variables (servers reject unknown ones)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBXMESH_")}
    env.update(extra or {})
    return env


class Server:
    """One registry process."""

    def __init__(self, server_id: str, config_path: Path, env: dict[str, str]):
        self.id = server_id
        self.config_path = config_path
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.address = ""
        self.log: list[str] = []
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None

    async def start(self, wait_ready: bool = True, timeout: float = 15.0) -> Server:
        self.log.clear()
        self._ready = asyncio.Event()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "serve", "registry", "-c", str(self.config_path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=self.env, cwd=REPO,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read(self.process))
        if wait_ready:
            waiter = asyncio.ensure_future(self._ready.wait())
            exited = asyncio.ensure_future(self.process.wait())
            await asyncio.wait([waiter, exited], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            exited.cancel()
            if not self._ready.is_set():
                raise AssertionError(f"{self.id} did not start:\n" + "".join(self.log))
        return self

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            line = raw.decode(errors="replace")
            self.log.append(line)
            match = READY.search(line)
            if match and not self._ready.is_set():
                self.address = match.group(1)
                if self._channel is not None:
                    await self._channel.close()
                self._channel = grpc.aio.insecure_channel(self.address)
                self._ready.set()

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
        self.process.send_signal(sig)

    async def wait_exit(self, timeout: float = 10.0) -> int:
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), timeout)
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._reader, 2)
        return code

    async def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            self._reader.cancel()
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
        path = self.tmp / (file_name or f"{server_id}-{len(self.servers)}.yaml")
        path.write_text(yaml.safe_dump(document))
        server = Server(server_id, path, child_env(env))
        self.servers.append(server)
        return server

    async def start(self, server_id: str, *args: Any, **kwargs: Any) -> Server:
        return await self.server(server_id, *args, **kwargs).start()

    async def close(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers), return_exceptions=True)


class TcpProxy:
    """A loopback TCP relay in front of etcd whose path can be cut (a partition) and restored."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open = asyncio.Event()
        self._open.set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Stops relaying bytes, without closing anything: to both sides etcd just goes silent."""
        self._open.clear()

    def restore(self) -> None:
        """Drops every relayed connection (as a partition's end often does) and relays again."""
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        self._open.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._open.is_set():
            await self._open.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            w.close()
            self._writers.discard(w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            await self._open.wait()
            if writer.is_closing():
                break
            writer.write(data)
            await writer.drain()
        writer.close()

    async def close(self) -> None:
        self.restore()
        if self._server is not None:
            self._server.close()
