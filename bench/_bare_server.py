"""A grpc.aio server with one trivial unary method, for the resolve baseline.

It answers with the same messages as ResolveNumber, on the same event loop (uvloop) as the
registry, but with no interceptors, tracing or lookup: what Python gRPC alone costs per call.

Run by the bench as ``python -m bench._bare_server HOST:PORT``; serves gRPC health (the empty
name) so that the bench sees it ready as it sees the services; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc
import grpc.aio
import uvloop
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1._async import HealthServicer

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


async def serve(address: str) -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        resolve,
        request_deserializer=pb.ResolveNumberRequest.FromString,
        response_serializer=pb.ResolveNumberResponse.SerializeToString,
    )
    service, method = METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {method: handler})])
    health = HealthServicer()  # answers SERVING for "" from the start
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_insecure_port(address)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1]))
