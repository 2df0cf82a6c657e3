"""A grpc.aio server with one trivial unary method, for the resolve baseline.

It answers with the same messages as ResolveNumber, on the same event loop (uvloop) as the
registry, but with no interceptors, tracing or lookup: what Python gRPC alone costs per call.

Run by the bench as ``python -m bench._bare_server``; prints "listening on HOST:PORT", stops on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal

import grpc
import grpc.aio
import uvloop

from pbxmesh.registry.v1 import registry_pb2 as pb

METHOD = "/bench.Bare/Resolve"

ANSWER = pb.ResolveNumberResponse(
    route=pb.Route(
        number="1000000",
        server_id="bare",
        server_name="Bare server",
        local=True,
        display_name="User 1000000",
        kind=pb.NUMBER_KIND_USER,
    )
)


async def resolve(
    request: pb.ResolveNumberRequest,
    context: grpc.aio.ServicerContext[pb.ResolveNumberRequest, pb.ResolveNumberResponse],
) -> pb.ResolveNumberResponse:
    return ANSWER


async def serve() -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        resolve,
        request_deserializer=pb.ResolveNumberRequest.FromString,
        response_serializer=pb.ResolveNumberResponse.SerializeToString,
    )
    service, method = METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {method: handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    uvloop.run(serve())
