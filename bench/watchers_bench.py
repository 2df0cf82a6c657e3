"""Watchers benchmark: many WatchNumbers streams from one client on one real registry process.

Run from the project root:  .venv/bin/python bench/watchers_bench.py  [--streams N] [--numbers M]

Prints figures, never pass/fail: the time from opening each stream to its whole snapshot (p50,
p99, max), how many streams were admitted and how many refused (RESOURCE_EXHAUSTED beyond
``limits.streams_per_client``), and the registry's resident memory before the streams, while
they are open, and after the client left (and a new client opening the same number again).
Everything runs on 127.0.0.1 with an etcd of its own; everything started is stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ on the path; the harness needs the project root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gen"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import collections
import tempfile
import time
from typing import Any

import grpc
import grpc.aio

from pbxmesh.registry.v1 import registry_pb2 as pb
from pbxmesh.registry.v1 import registry_pb2_grpc as pb_grpc
from services.runtime.embedded_etcd import EmbeddedEtcd
from tests.harness.servers import Group, has_numbers
from tests.harness.wait import wait_for

STREAMS_PER_CHANNEL = 100  # as a client library would spread them over connections


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def snapshot(stub: pb_grpc.RegistryServiceAsyncStub) -> tuple[Any, float | str]:
    """Opens a watch and reads up to its first ``synced`` message: (call, seconds), or (call, the
    status code it ended with)."""
    started = time.perf_counter()
    call = stub.WatchNumbers(pb.WatchNumbersRequest())
    try:
        while True:
            message = await asyncio.wait_for(call.read(), 60)
            if message is grpc.aio.EOF:
                return call, "EOF"
            if isinstance(message, pb.WatchNumbersResponse) and message.synced:
                return call, time.perf_counter() - started
    except grpc.aio.AioRpcError as error:
        return call, error.code().name


async def open_streams(
    address: str, count: int
) -> tuple[list[grpc.aio.Channel], list[Any], list[float], dict[str, int]]:
    channels = [grpc.aio.insecure_channel(address) for _ in range(-(-count // STREAMS_PER_CHANNEL))]
    stubs = [pb_grpc.RegistryServiceStub(c) for c in channels]
    results = await asyncio.gather(*(snapshot(stubs[i // STREAMS_PER_CHANNEL]) for i in range(count)))
    latencies = [t for _, t in results if isinstance(t, float)]
    ended = collections.Counter(t for _, t in results if isinstance(t, str))
    return channels, [c for c, _ in results], latencies, dict(ended)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(streams: int, numbers: int, per_client: int, total: int) -> None:
    etcd = EmbeddedEtcd()
    etcd.start()
    with tempfile.TemporaryDirectory() as tmp:
        group = Group(etcd.endpoint, Path(tmp), name="watchers-bench")
        try:
            plan: list[str | dict[str, str]] = [str(100_000 + n) for n in range(numbers)]
            limits = {"streams_per_client": per_client, "streams_total": total}
            alpha = await group.server("alpha", plan, extra={"limits": limits}).start(timeout=60)
            pid = alpha.process.pid if alpha.process is not None else 0
            await wait_for(lambda: has_numbers(alpha, set(map(str, plan))), timeout=60, what="the whole plan")
            before = rss_mb(pid)
            print(f"registry: {numbers} numbers, limits per client {per_client}, total {total}")
            print(f"  RSS before the streams        {before:8.1f} MB")
            started = time.perf_counter()
            channels, calls, latencies, refused = await open_streams(alpha.address, streams)
            took = time.perf_counter() - started
            during = rss_mb(pid)
            print(f"  {streams} streams asked in {took:.2f} s: {len(latencies)} got their snapshot, ended: {refused}")
            print(
                f"  snapshot latency p50 {percentile(latencies, 0.5) * 1000:.1f} ms,"
                f" p99 {percentile(latencies, 0.99) * 1000:.1f} ms,"
                f" max {max(latencies, default=float('nan')) * 1000:.1f} ms"
            )
            print(f"  RSS with the streams open     {during:8.1f} MB")
            for call in calls:
                call.cancel()
            for channel in channels:
                await channel.close()
            for wait in (1, 5):
                await asyncio.sleep(wait)
                print(f"  RSS after the client left     {rss_mb(pid):8.1f} MB (+{wait} s)")
            channels, _, latencies, refused = await open_streams(alpha.address, min(streams, per_client))
            print(f"  a new client: {len(latencies)} snapshots, ended: {refused}")
            for channel in channels:
                await channel.close()
        finally:
            await group.close()
            etcd.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10_000, help="streams one client asks for")
    parser.add_argument("--numbers", type=int, default=1000, help="numbers in the plan (the snapshot)")
    parser.add_argument("--per-client", type=int, default=100, help="limits.streams_per_client")
    parser.add_argument("--total", type=int, default=1000, help="limits.streams_total")
    args = parser.parse_args()
    asyncio.run(run(args.streams, args.numbers, args.per_client, args.total))


if __name__ == "__main__":
    main()
