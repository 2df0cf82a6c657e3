"""A health-check prober in its own process: a slow answer means the registry's event loop was busy.

In the bench process the probe would also time the bench's own work (decoding a plan of 100,000
numbers holds the GIL for tens of milliseconds), so it runs apart. It checks every 20 ms from the
moment the port opens and prints one line per answer:

    ready                       started, about to connect (the bench may start the server now)
    answered <t>                first answer (connecting included, so not a sample)
    sample <t> <seconds> <ok>   a check sent at <t> took <seconds>

Times are ``time.perf_counter()``: CLOCK_MONOTONIC on Linux, the same clock in every process, so
the bench can lay them next to its own. Run as ``python -m bench._probe HOST:PORT``; stops on
SIGTERM or after 20,000 checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time

import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

INTERVAL = 0.02
MAX_CHECKS = 20_000  # 400 s at one check per 20 ms
CONNECT_WAIT = 60.0
OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 10),
    ("grpc.max_reconnect_backoff_ms", 50),
]


async def probe(address: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    request = health_pb2.HealthCheckRequest(service="")
    async with grpc.aio.insecure_channel(address, options=OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        print("ready", flush=True)
        try:
            await stub.Check(request, timeout=CONNECT_WAIT, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            print(f"failed {exc.code().name}", flush=True)
            return
        print(f"answered {time.perf_counter():.6f}", flush=True)
        for _ in range(MAX_CHECKS):
            if stop.is_set():
                return
            sent = time.perf_counter()
            ok = 1
            try:
                await stub.Check(request, timeout=30)
            except grpc.aio.AioRpcError:
                ok = 0
            print(f"sample {sent:.6f} {time.perf_counter() - sent:.6f} {ok}", flush=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(INTERVAL):
                    await stop.wait()


if __name__ == "__main__":
    asyncio.run(probe(sys.argv[1]))
