"""What every bench section shares: parameters, the processes it starts, and gRPC channels to them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc.aio

from tests.harness.config import write_config
from tests.harness.process import ServiceError, ServiceProcess, wait_serving

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
RPC_TIMEOUT = 5.0
STOP_WAIT = 6.0  # a registry drains for 2 s on SIGTERM

# No proxy for loopback; reconnect fast, so a client started before its server connects as soon
# as the port opens (the default backoff would add up to a second to start-up figures).
CLIENT_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 10),
    ("grpc.max_reconnect_backoff_ms", 50),
]


class BenchError(Exception):
    """The bench could not measure something (a process died, a wait ran out)."""


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


async def bounded(aw: Awaitable[T], wait_s: float, what: str) -> T:
    # asyncio.timeout rather than wait_for: on Python 3.11, wait_for can swallow a cancellation
    # of the caller, and leaves a cancelled gather's exception unretrieved (a logged warning).
    try:
        async with asyncio.timeout(wait_s):
            return await aw
    except TimeoutError:
        raise BenchError(f"{what}: no answer within {wait_s} s") from None


def channel(address: str, *, limit: int | None = None) -> grpc.aio.Channel:
    """A client channel; ``limit`` raises the 4 MiB default for received messages."""
    options = list(CLIENT_OPTIONS)
    if limit is not None:
        options.append(("grpc.max_receive_message_length", limit))
    return grpc.aio.insecure_channel(address, options=options)


# -- processes ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    spawned: float  # perf_counter at Popen
    service: ServiceProcess | None = None  # a pbxmesh service (the harness's process), else None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log.read_text("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join("    | " + line for line in self.log_text().splitlines()[-lines:]) or "    | (no log)"


class Supervisor:
    """Every process the bench starts (etcd aside); stops them by PID: SIGTERM, bounded wait, SIGKILL."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.children: list[Child] = []
        # The registry rejects unknown PBXMESH_ variables; OTEL_ would turn on exporting; gRPC
        # and etcd clients would send loopback traffic to a proxy.
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

    def spawn_service(self, name: str, service: str, config: Path) -> Child:
        """``pbxmesh serve SERVICE -c CONFIG`` through the test harness, its output in NAME.log."""
        log = self.workdir / f"{name}.log"
        process = ServiceProcess(service, config, name=name, env=self.env, log_file=log).spawn()
        assert process.popen is not None
        child = Child(name, process.popen, log, process.spawned, process)
        self.children.append(child)
        return child

    @staticmethod
    def _signal(child: Child, sig: signal.Signals) -> None:
        if child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, sig)

    def kill9(self, child: Child) -> None:
        self._signal(child, signal.SIGKILL)

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

    async def wait_exit(self, child: Child, wait_s: float) -> int | None:
        """Waits without blocking the event loop; None if it still runs after ``wait_s``."""
        for _ in range(max(1, round(wait_s / 0.02))):
            if child.proc.poll() is not None:
                break
            await asyncio.sleep(0.02)
        return child.proc.poll()

    def stop_all(self) -> None:
        live = [c for c in self.children if c.proc.poll() is None]
        if live:
            self.stop(live)
        for child in self.children:  # reap, never leave zombies behind
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=0.5)


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


async def wait_ready(child: Child, wait_s: float) -> tuple[str, float]:
    """A service's gRPC address, and when the bench saw it serving (its gRPC health)."""
    assert child.service is not None, f"{child.name} is not a pbxmesh service"
    try:
        seen = await child.service.wait_ready(wait_s)
    except ServiceError as exc:
        raise BenchError(str(exc)) from None
    return child.service.address, seen


async def wait_health(child: Child, address: str, wait_s: float) -> float:
    """When the bench saw ``address`` serving (gRPC health, the empty service name)."""
    try:
        return await wait_serving(address, "", lambda: child.proc.poll() is None, wait_s)
    except ServiceError as exc:
        raise BenchError(f"{child.name}: {exc}:\n{child.log_tail()}") from None


# -- registries ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Registry:
    server_id: str
    child: Child
    address: str
    listening_after: float  # seconds from Popen until the bench saw it serving (its gRPC health)
    numbers: list[str]

    @property
    def pid(self) -> int:
        return self.child.pid


def spawn_registry(
    sup: Supervisor,
    etcd_endpoint: str,
    server_id: str,
    *,
    group: str,
    ttl: int,
    numbers: Sequence[str],
    listen: str = "127.0.0.1:0",
) -> Child:
    """Writes the server's config (a port 0 given a free port) and starts ``pbxmesh serve
    registry`` on it; does not wait."""
    config = {
        "server": {"id": server_id, "name": f"Bench {server_id}"},
        "connector": {"endpoints": [etcd_endpoint], "group": group, "lease_ttl": ttl},
        "listen": {"registry": listen},
        "numbering": {"numbers": [{"number": n, "name": f"User {n}"} for n in numbers]},
        "telemetry": {"log_level": "info"},
    }
    path = write_config(sup.workdir / f"{server_id}.yaml", config)
    return sup.spawn_service(server_id, "registry", path)


async def start_registry(
    sup: Supervisor, etcd_endpoint: str, server_id: str, *, group: str, ttl: int, numbers: Sequence[str]
) -> Registry:
    """Starts a registry and waits until it serves, which it does once it has read the group."""
    child = spawn_registry(sup, etcd_endpoint, server_id, group=group, ttl=ttl, numbers=numbers)
    address, seen = await wait_ready(child, 30)
    return Registry(server_id, child, address, seen - child.spawned, list(numbers))
