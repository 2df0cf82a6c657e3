"""Sections 2 and 3: how fast a change reaches another server, and how fast a dead one goes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import subprocess
import time

from bench._feeds import MembersFeed, NumbersFeed
from bench._harness import RPC_TIMEOUT, BenchError, Params, Registry, Supervisor, channel, start_registry
from bench._report import Report, pct, section
from pbxmesh.registry.v1 import registry_pb2 as pb
from pbxmesh.registry.v1 import registry_pb2_grpc as pb_grpc

SEEN_WAIT = 5.0  # an upsert not seen by then counts as lost


async def bench_convergence(report: Report, params: Params, a: Registry, b: Registry) -> None:
    section(f"2. plan convergence: UpsertNumber on {a.server_id} -> WatchNumbers event on {b.server_id}")
    loop = asyncio.get_running_loop()
    pending: dict[str, asyncio.Future[float]] = {}

    def on_upsert(route: pb.Route, at: float) -> None:
        fut = pending.get(route.number)
        if fut is not None and not fut.done() and route.server_id == a.server_id:
            fut.set_result(at)

    feed = NumbersFeed(b.address, on_upsert=on_upsert)
    feed.start()
    ch = channel(a.address)
    stub = pb_grpc.RegistryServiceStub(ch)
    try:
        if not await feed.wait_until(lambda: feed.snapshot is not None, 10):
            raise BenchError(f"no WatchNumbers snapshot from {b.server_id} in 10 s")
        seen: list[float] = []
        acked: list[float] = []
        ack_first = lost = 0
        warmup = min(20, params.upserts)
        deadline = time.monotonic() + 120
        for i in range(warmup + params.upserts):
            if time.monotonic() > deadline:
                break
            number = f"5{i:06d}"
            fut: asyncio.Future[float] = loop.create_future()
            pending[number] = fut
            t0 = time.perf_counter()
            request = pb.UpsertNumberRequest(number=number, display_name=f"Conv {i}")
            await stub.UpsertNumber(request, timeout=RPC_TIMEOUT)
            t_ack = time.perf_counter()
            try:
                async with asyncio.timeout(SEEN_WAIT):
                    t_seen = await fut
            except TimeoutError:
                lost += 1
                continue
            finally:
                pending.pop(number, None)
            if i >= warmup:
                seen.append(t_seen - t0)
                acked.append(t_ack - t0)
                ack_first += t_ack <= t_seen
        report.dist(
            "2",
            f"upsert on {a.server_id} -> event on {b.server_id}'s WatchNumbers",
            seen,
            "p99 < 5 ms",
            f"{lost} not seen in {SEEN_WAIT:.0f} s; the stream stayed connected: {feed.flips == []}",
        )
        report.dist(
            "2",
            f"UpsertNumber RPC on {a.server_id} (until its answer)",
            acked,
            "",
            f"answer came before {b.server_id}'s event in {ack_first}/{len(seen)}",
        )
    finally:
        await feed.close()
        await ch.close()


async def bench_crash(
    report: Report, params: Params, sup: Supervisor, etcd_endpoint: str, *, observer: Registry, group: str
) -> None:
    section(f"3. crash expiry: kill -9 a registry -> 'left' on {observer.server_id}'s WatchMembers")
    feed = MembersFeed(observer.address)
    feed.start()
    try:
        if not await feed.wait_until(lambda: feed.synced, 10):
            raise BenchError("WatchMembers snapshot not received in 10 s")
        for ttl in params.crash_ttls:
            samples: list[float] = []
            runs: list[str] = []
            for rep in range(params.crash_reps):
                sid = f"crash-t{ttl}-{rep}"
                numbers = [f"6{ttl}{rep}{j:04d}" for j in range(10)]
                victim = await start_registry(sup, etcd_endpoint, sid, group=group, ttl=ttl, numbers=numbers)
                if not await feed.wait_until(functools.partial(feed.joined.__contains__, sid), 15):
                    raise BenchError(f"{sid} never showed up on {observer.server_id}:\n{victim.child.log_tail()}")
                # Spread the kill over the keepalive period (every TTL/3), so the lease's remaining
                # time at the kill differs between repetitions.
                await asyncio.sleep(1.0 + (ttl / 3) * rep / max(1, params.crash_reps))
                t_kill = time.perf_counter()
                sup.kill9(victim.child)
                gone = await feed.wait_until(functools.partial(feed.left.__contains__, sid), ttl + 15)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    victim.child.proc.wait(timeout=2)
                if gone:
                    samples.append(feed.left[sid] - t_kill)
                    runs.append(f"{samples[-1]:.2f}")
                else:
                    runs.append(f">{ttl + 15}")
            spread = (
                f"min {min(samples):.2f} s, median {pct(samples, 50):.2f} s, max {max(samples):.2f} s"
                if samples
                else "no sample"
            )
            report.value(
                "3",
                f"lease_ttl {ttl}: kill -9 -> left seen ({params.crash_reps} runs)",
                f"{pct(samples, 50):.2f} s" if samples else "-",
                f"<= TTL+1 = {ttl + 1} s",
                f"{spread}; runs: {', '.join(runs)} s",
            )
    finally:
        await feed.close()
