"""Bad input at the edges of a running registry, and the limit on the streams a client holds.

Undecodable bytes on a gRPC method, a display name holding control characters, and thousands of
watch streams from one client: each is refused with a status and a reason, never a traceback.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from typing import Any

import grpc
import grpc.aio
import pytest

from pbxmesh.registry.v1 import registry_pb2 as pb
from pbxmesh.registry.v1 import registry_pb2_grpc as pb_grpc
from services.runtime import error_info
from tests.support import REPO, Group, child_env, wait_for

GARBAGE = b"\x0a\xff\xff\xff\xff\x0f"  # a length-delimited field whose length runs past the end
PER_CLIENT = 5


async def _call_with_garbage(address: str, method: str, streaming: bool) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            # A serializer that ignores the request: the bytes on the wire are GARBAGE.
            if streaming:
                stream: Any = channel.unary_stream(method, request_serializer=lambda _: GARBAGE)
                async for _ in stream(b"", timeout=5):
                    pass
            else:
                unary: Any = channel.unary_unary(method, request_serializer=lambda _: GARBAGE)
                await unary(b"", timeout=5)
    return caught.value


async def test_undecodable_request_is_refused_in_one_log_line(group: Group) -> None:
    alpha = await group.start("alpha", ["100"])
    service = "/pbxmesh.registry.v1.RegistryService"
    for method, streaming in ((f"{service}/ResolveNumber", False), (f"{service}/WatchNumbers", True)):
        error = await _call_with_garbage(alpha.address, method, streaming)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        info = error_info(error)
        assert info is not None and info.reason == "UNDECODABLE_REQUEST"
        assert "Wire format" not in (error.details() or "")  # no parser text goes to the client

    async def logged() -> list[str]:
        return [line for line in alpha.log if "undecodable request" in line]

    lines = await wait_for(lambda: _nonempty_after(logged, 2), what="the log lines")
    assert len(lines) == 2 and "ResolveNumber" in lines[0] and "WatchNumbers" in lines[1]
    assert not [line for line in alpha.log if "Traceback" in line or "DecodeError:" in line]
    # The server goes on serving.
    assert (await alpha.resolve("100")) is not None


async def _nonempty_after(get: Any, count: int) -> list[str] | None:
    lines: list[str] = await get()
    return lines if len(lines) >= count else None


@pytest.mark.parametrize(
    "display_name",
    ["Eve\r\nVia: SIP/2.0/UDP 6.6.6.6", "nul\x00byte", "tab\there", "line\u2028separator", "x" * 129],
)
async def test_upsert_number_refuses_control_characters_and_long_names(group: Group, display_name: str) -> None:
    alpha = await group.start("alpha", ["100"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await alpha.stub.UpsertNumber(pb.UpsertNumberRequest(number="150", display_name=display_name), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info is not None and info.reason == "INVALID_DISPLAY_NAME"
    assert await alpha.resolve("150") is None
    # A fit name still goes in.
    await alpha.stub.UpsertNumber(pb.UpsertNumberRequest(number="150", display_name="x" * 128), timeout=5)
    assert await alpha.resolve("150") is not None


async def _watch(stub: pb_grpc.RegistryServiceAsyncStub) -> tuple[Any, pb.WatchNumbersResponse]:
    """A WatchNumbers stream and its first message (the snapshot of a small plan is one message)."""
    call = stub.WatchNumbers(pb.WatchNumbersRequest())
    first = await asyncio.wait_for(call.read(), 5)
    assert isinstance(first, pb.WatchNumbersResponse)
    return call, first


async def _refused(stub: pb_grpc.RegistryServiceAsyncStub) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _watch(stub)
    return caught.value


async def test_streams_beyond_the_client_limit_are_refused_and_released(group: Group) -> None:
    alpha = await group.start("alpha", ["100"], extra={"limits": {"streams_per_client": PER_CLIENT}})
    async with grpc.aio.insecure_channel(alpha.address) as channel:
        stub = pb_grpc.RegistryServiceStub(channel)
        watches = [await _watch(stub) for _ in range(PER_CLIENT)]
        assert all(first.synced and first.upserted[0].number == "100" for _, first in watches)
        error = await _refused(stub)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_info(error)
        assert info is not None and info.reason == "TOO_MANY_STREAMS" and info.metadata["limit"] == "per_client"
        # Every server-streaming RPC counts against the same limit.
        with pytest.raises(grpc.aio.AioRpcError) as members:
            await asyncio.wait_for(stub.WatchMembers(pb.WatchMembersRequest()).read(), 5)
        assert members.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The streams admitted still carry changes.
        await stub.UpsertNumber(pb.UpsertNumberRequest(number="101"), timeout=5)
        for call, _ in watches:
            change = await asyncio.wait_for(call.read(), 5)
            assert [r.number for r in change.upserted] == ["101"]
        # Unary calls are not streams: they go on.
        assert await alpha.resolve("101") is not None
    # The client closed its channel: its streams are given back, a new client opens as many.
    await wait_for(lambda: _can_open(alpha.address, PER_CLIENT), what="streams given back after close")


async def _can_open(address: str, count: int) -> bool:
    """Whether a new client gets ``count`` streams with their snapshot (then it closes them)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RegistryServiceStub(channel)
        try:
            for _ in range(count):
                _, first = await _watch(stub)
                assert first.synced
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return False
            raise
    return True


CLIENT = """
import asyncio, sys, grpc.aio
from pbxmesh.registry.v1 import registry_pb2 as pb, registry_pb2_grpc as pb_grpc

async def main():
    channel = grpc.aio.insecure_channel(sys.argv[1])
    stub = pb_grpc.RegistryServiceStub(channel)
    calls = [stub.WatchNumbers(pb.WatchNumbersRequest()) for _ in range(int(sys.argv[2]))]
    for call in calls:
        await call.read()
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_streams_of_a_killed_client_are_released(group: Group) -> None:
    alpha = await group.start("alpha", ["100"], extra={"limits": {"streams_per_client": PER_CLIENT}})
    client = subprocess.Popen(  # noqa: ASYNC220  # starts at once; its output is read in a thread
        [sys.executable, "-c", CLIENT, alpha.address, str(PER_CLIENT)],
        stdout=subprocess.PIPE, text=True, env=child_env(), cwd=REPO,
    )  # fmt: skip
    try:
        assert client.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(client.stdout.readline), 15)
        assert line.strip() == "ready"
        assert not await _can_open(alpha.address, 1)
    finally:
        client.send_signal(signal.SIGKILL)
        await asyncio.to_thread(client.wait, 10)
    # No goodbye from the client: its connection drops and the server gives its streams back.
    await wait_for(lambda: _can_open(alpha.address, PER_CLIENT), what="streams given back after kill")
