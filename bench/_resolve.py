"""Section 1: ResolveNumber latency and throughput, next to what plain Python gRPC costs here."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import _bare_server
from bench._harness import RPC_TIMEOUT, Params, Registry, Supervisor, bounded, channel, cpu_seconds, wait_health
from bench._report import Report, section
from pbxmesh.registry.v1 import registry_pb2 as pb
from pbxmesh.registry.v1 import registry_pb2_grpc as pb_grpc
from services.runtime.embedded_etcd import free_port

Call = Callable[[int], Awaitable[Any]]


async def sequential(call: Call, n: int, server_pid: int, cap_s: float = 60.0) -> tuple[list[float], str]:
    """``n`` calls one after the other (at most ``cap_s``); latencies and the server's CPU per call."""
    out: list[float] = []
    stop_at = time.monotonic() + cap_s
    cpu0 = cpu_seconds(server_pid)
    for i in range(n):
        t0 = time.perf_counter()
        await call(i)
        out.append(time.perf_counter() - t0)
        if time.monotonic() > stop_at:
            break
    cpu = cpu_seconds(server_pid) - cpu0
    return out, f"server CPU {cpu / max(1, len(out)) * 1e6:.0f} us/call"


@dataclasses.dataclass
class Load:
    calls: int
    errors: int
    elapsed: float
    latencies: list[float]
    server_cpu: float  # share of one core
    client_cpu: float  # share of one core (the bench process)

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed


async def under_load(call: Call, params: Params, server_pid: int) -> Load:
    """``params.concurrency`` callers on one channel, bounded by time and by count."""
    count = errors = 0
    latencies: list[float] = []
    end = time.monotonic() + params.throughput_seconds

    async def caller(k: int) -> None:
        nonlocal count, errors
        i = k
        while count < params.throughput_max_calls and time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                await call(i)
            except grpc.aio.AioRpcError:
                errors += 1
            latencies.append(time.perf_counter() - t0)
            count += 1
            i += params.concurrency

    cpu0, client0 = cpu_seconds(server_pid), time.process_time()
    t0 = time.perf_counter()
    callers = asyncio.gather(*(caller(k) for k in range(params.concurrency)))
    await bounded(callers, params.throughput_seconds + 30, "throughput run")
    elapsed = time.perf_counter() - t0
    server_cpu = (cpu_seconds(server_pid) - cpu0) / elapsed
    return Load(count, errors, elapsed, latencies, server_cpu, (time.process_time() - client0) / elapsed)


async def bench_resolve(report: Report, params: Params, sup: Supervisor, reg: Registry, remote: Registry) -> None:
    section(f"1. ResolveNumber on one registry ({reg.address}), client: grpc.aio in the bench process")
    ch = channel(reg.address)
    stub = pb_grpc.RegistryServiceStub(ch)
    health = health_pb2_grpc.HealthStub(ch)
    try:
        own = [pb.ResolveNumberRequest(number=n) for n in reg.numbers]
        others = [pb.ResolveNumberRequest(number=n) for n in remote.numbers]
        miss = pb.ResolveNumberRequest(number="4999999")
        hreq = health_pb2.HealthCheckRequest(service="")
        deadline = time.monotonic() + 60
        for i in range(params.warmup):
            await stub.ResolveNumber(own[i % len(own)], timeout=RPC_TIMEOUT)
            await health.Check(hreq, timeout=RPC_TIMEOUT)
            if time.monotonic() > deadline:
                break

        def resolve_own(i: int) -> Awaitable[pb.ResolveNumberResponse]:
            return stub.ResolveNumber(own[i % len(own)], timeout=RPC_TIMEOUT)

        async def resolve_miss(_: int) -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.ResolveNumber(miss, timeout=RPC_TIMEOUT)

        n = params.resolve_calls
        lat, cpu = await sequential(resolve_own, n, reg.pid)
        report.dist("1", "resolve, sequential, own number", lat, "p99 < 1 ms", cpu)
        lat, cpu = await sequential(
            lambda i: stub.ResolveNumber(others[i % len(others)], timeout=RPC_TIMEOUT), n, reg.pid
        )
        report.dist("1", "resolve, sequential, number of another server", lat, "p99 < 1 ms", cpu)
        lat, cpu = await sequential(resolve_miss, min(n, 2000), reg.pid)
        report.dist("1", "resolve, sequential, unknown number (NOT_FOUND)", lat, "", f"{cpu}; error path")
        lat, cpu = await sequential(lambda _: health.Check(hreq, timeout=RPC_TIMEOUT), n, reg.pid)
        report.dist("1", "baseline: grpc.health Check, same registry", lat, "", f"{cpu}; no registry code, not traced")

        load = await under_load(resolve_own, params, reg.pid)
        report.value(
            "1",
            f"resolve throughput, {params.concurrency} concurrent callers",
            f"{load.rate:,.0f}/s",
            "",
            f"{load.calls} calls in {load.elapsed:.1f} s, {load.errors} errors; CPU: registry "
            f"{load.server_cpu:.0%}, bench client {load.client_cpu:.0%} of one core",
        )
        report.dist("1", f"resolve latency under load ({params.concurrency} callers)", load.latencies)
    finally:
        await ch.close()
    await bare_baseline(report, params, sup)


async def bare_baseline(report: Report, params: Params, sup: Supervisor) -> None:
    """The same client and messages against a server process that does nothing else."""
    address = f"127.0.0.1:{free_port()}"
    child = sup.spawn("bare-grpc", [sys.executable, "-m", "bench._bare_server", address])
    try:
        await wait_health(child, address, 30)
        ch = channel(address)
        try:
            method = ch.unary_unary(
                _bare_server.METHOD,
                request_serializer=pb.ResolveNumberRequest.SerializeToString,
                response_deserializer=pb.ResolveNumberResponse.FromString,
            )
            request = pb.ResolveNumberRequest(number="1000000")

            def resolve(_: int) -> Awaitable[pb.ResolveNumberResponse]:
                return method(request, timeout=RPC_TIMEOUT)

            for i in range(params.warmup):
                await resolve(i)
            lat, cpu = await sequential(resolve, params.resolve_calls, child.pid)
            load = await under_load(resolve, params, child.pid)
        finally:
            await ch.close()
    finally:
        sup.stop([child])
    report.dist(
        "1",
        "baseline: bare grpc.aio server, one trivial unary method",
        lat,
        "",
        f"{cpu}; separate process, uvloop, no interceptors or tracing; {load.rate:,.0f}/s with "
        f"{params.concurrency} callers ({load.errors} errors, server CPU {load.server_cpu:.0%})",
    )
