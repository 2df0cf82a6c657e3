"""The C load generator (``bench/rtpload.c``): compiled once per run, driven from asyncio.

One :class:`Load` is one run of the generator: it binds ``2 * calls`` sockets (stream ``k`` on
``base_port + 2k``; streams ``2i`` and ``2i + 1`` are the two sides of call ``i``), sends from each
to the destination it is given and counts what comes back (see the C file's comment).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "rtpload.c"


def compile_rtpload(directory: Path) -> Path:
    """Builds the generator into ``directory`` with ``gcc -O2``; returns the binary's path."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc not found: the media bench compiles its load generator (apt-get install gcc)")
    binary = directory / "rtpload"
    subprocess.run([gcc, "-O2", "-Wall", "-Wextra", "-o", str(binary), str(SOURCE)], check=True)
    return binary


def stream_ports(base_port: int, streams: int) -> list[int]:
    """The local port of each stream (every other port: the odd one above is RTCP's, never bound)."""
    return [base_port + 2 * k for k in range(streams)]


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """What one run of the generator counted (latencies in microseconds, histogram resolution 10 us)."""

    streams: int
    seconds: float
    sent: int
    received: int
    lost: int
    streams_with_loss: int
    duplicates: int
    foreign: int
    send_errors: int
    late: int
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    max_us: float
    cpu_s: float

    @property
    def loss_percent(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else 0.0


async def run_load(
    binary: Path,
    *,
    base_port: int,
    destinations: Sequence[tuple[str, int]],
    seconds: float,
    drain_ms: int = 300,
    on_start: Callable[[], Awaitable[None]] | None = None,
) -> LoadResult:
    """Runs the generator once; ``on_start`` is awaited when it is about to send its first packet."""
    process = await asyncio.create_subprocess_exec(
        str(binary),
        "--base-port",
        str(base_port),
        "--streams",
        str(len(destinations)),
        "--seconds",
        str(seconds),
        "--drain",
        str(drain_ms),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    try:
        process.stdin.write("".join(f"{host} {port}\n" for host, port in destinations).encode())
        await process.stdin.drain()
        process.stdin.close()
        limit = seconds + drain_ms / 1000 + 30
        async with asyncio.timeout(limit):
            started = await process.stdout.readline()
            if not started.startswith(b'{"event":"start"}'):
                error = await process.stderr.read()
                raise RuntimeError(f"rtpload did not start: {error.decode().strip() or started!r}")
            if on_start is not None:
                await on_start()
            line = await process.stdout.readline()
            await process.wait()
        if process.returncode != 0 or not line:
            error = await process.stderr.read()
            raise RuntimeError(f"rtpload exited {process.returncode}: {error.decode().strip()}")
        return LoadResult(**json.loads(line))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
