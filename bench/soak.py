"""Gateway soak: local calls at a steady rate through one gateway for a long time, and its memory.

SIPp calls (407 challenge, answer, 300 ms, BYE) through one gateway (with its registry, on an
embedded etcd) at ``--rate`` calls/s for ``--minutes``. Every ``--every`` seconds: time, calls
created, succeeded and failed (SIPp's counts), the gateway's RSS, its calls in progress (the API's
ListCalls), and with ``--heap`` the gateway's own view: pymalloc blocks in use, glibc malloc's bytes
in use and free, and the sizes of its per-call tables (transactions, calls, dialog indexes, digest
nonce counts...). After the load the same again for ``--after`` seconds (the tables empty once
the last timers pass, 64*T1 = 32 s), then, with ``--heap``, ``malloc_trim``: what RSS would be if
the allocator gave back what it keeps free. RSS that stays high while the heap and tables fall is
the allocator keeping pages, not a leak. Not part of `make test`.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 50] [--every 30] [--after 60] [--heap]

BENCH_TRACEMALLOC=N (with --heap) also traces the gateway's allocations (N frames; it slows the
gateway) and prints where its memory was allocated at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gen"))
sys.path.insert(0, str(ROOT))

from bench.sipgw_bench import CALLEE, CALLER, SIPP_DIR, Rig, listen_of, rss_mib, server_config  # noqa: E402
from pbxmesh.sipgw.v1 import sipgw_pb2, sipgw_pb2_grpc  # noqa: E402
from services.runtime.embedded_etcd import free_port  # noqa: E402
from tests.harness.process import stop_popen  # noqa: E402

HEAP_KEYS = ("py_blocks", "malloc_in_use_mib", "malloc_free_mib", "tx_clients", "tx_servers", "calls", "by_dialog",
             "by_invite", "retired", "nonce_counts", "call_traces")  # fmt: skip


class HeapView:
    """Asks the gateway's memory watcher (``_memwatch.py``) for figures; empty dicts without it."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.seq = 0

    async def ask(self, command: str, wait_s: float = 10.0) -> dict[str, object]:
        if self.folder is None:
            return {}
        self.seq += 1
        (self.folder / "request").write_text(f"{self.seq} {command}")
        for _ in range(int(wait_s / 0.1)):
            await asyncio.sleep(0.1)
            with contextlib.suppress(OSError, ValueError):
                reply = json.loads((self.folder / "reply").read_text())
                if reply.get("seq") == str(self.seq):
                    return dict(reply)
        return {"error": f"no answer to {command} within {wait_s} s"}


def sipp_stats(path: Path) -> dict[str, str]:
    """The last row of SIPp's statistics file (cumulative counts), empty before its first."""
    with contextlib.suppress(OSError):
        rows = list(csv.DictReader(path.open(), delimiter=";"))
        if rows:
            return rows[-1]
    return {}


async def live_calls(address: str) -> str:
    """Calls in progress on the gateway, as its API lists them."""
    import grpc.aio

    async with grpc.aio.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            stub = sipgw_pb2_grpc.SipGatewayServiceStub(channel)
            reply = await stub.ListCalls(sipgw_pb2.ListCallsRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return f"({exc.code().name})"
    return str(len(reply.calls))


def header(heap: bool) -> None:
    columns = f"{'time s':>7} {'created':>8} {'ok':>8} {'failed':>7} {'gw RSS MiB':>11} {'in calls':>9}"
    if heap:
        columns += " " + " ".join(f"{k:>{max(len(k), 8)}}" for k in HEAP_KEYS)
    print(columns, flush=True)


async def line(start: float, stats: dict[str, str], gateway: int, api: str, view: HeapView) -> None:
    heap = await view.ask("heap")
    text = (
        f"{time.monotonic() - start:>7.0f} {stats.get('TotalCallCreated', '-'):>8}"
        f" {stats.get('SuccessfulCall(C)', '-'):>8} {stats.get('FailedCall(C)', '-'):>7}"
        f" {rss_mib([gateway]):>11.1f} {await live_calls(api):>9}"
    )
    if view.folder is not None:
        if "error" in heap:
            text += f" heap: {heap['error']}"
        else:
            text += " " + " ".join(f"{heap.get(k, '-')!s:>{max(len(k), 8)}}" for k in HEAP_KEYS)
    print(text, flush=True)


def start_load(target: str, rate: int, seconds: int, stats: Path, workdir: Path) -> subprocess.Popen[bytes]:
    """SIPp placing ``rate`` calls/s for ``seconds`` (its statistics each second in ``stats``);
    it stops by itself, and its -timeout and ``timeout`` stop it if it does not."""
    sipp = shutil.which("sipp") or "sipp"
    return subprocess.Popen(
        [
            "timeout", str(seconds + 120), sipp, target, "-sf", str(SIPP_DIR / "caller.xml"),
            "-i", "127.0.0.1", "-p", str(free_port()), "-s", "101", "-key", "caller", CALLER[0],
            "-au", CALLER[0], "-ap", CALLER[1], "-r", str(rate), "-m", str(rate * seconds), "-l", str(rate * 4),
            "-timeout", f"{seconds + 90}s", "-trace_stat", "-stf", str(stats), "-fd", "1",
            "-nostdin", "-buff_size", "4194304",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir,
    )  # fmt: skip


async def soak(args: argparse.Namespace) -> int:
    rig = Rig()
    load: subprocess.Popen[bytes] | None = None
    folder = rig.tmp / "memwatch" if args.heap else None
    if folder is not None:
        folder.mkdir()
        rig.python_of["sipgw"] = [sys.executable, str(ROOT / "bench" / "_memwatch.py"), str(folder)]
    view = HeapView(folder)
    try:
        config = server_config("soak", "ETCD", [CALLER, CALLEE])
        await rig.servers({"soak": config}, ("registry", "sipgw"))
        target, api = listen_of(config, "sip"), listen_of(config, "sipgw")
        rig.answering_phone(target, CALLEE)
        gateway = rig.gateways[0]
        seconds = int(args.minutes * 60)
        total = args.rate * seconds
        stats = rig.tmp / "stats.csv"
        print(
            f"== soak: {args.rate} local calls/s for {seconds} s ({total} calls) through one gateway;"
            f" {os.cpu_count()} cores, Python {sys.version.split()[0]}",
            flush=True,
        )
        header(args.heap)
        start = time.monotonic()
        await line(start, {}, gateway, api, view)
        if os.environ.get("BENCH_TRACEMALLOC"):
            await view.ask("mark", wait_s=60)
        load = start_load(target, args.rate, seconds, stats, rig.tmp)
        # Bounded: SIPp stops by itself after its calls; this loop stops at the latest when `timeout` would.
        tick = start + args.every
        while load.poll() is None and time.monotonic() < start + seconds + 120:
            await asyncio.sleep(min(1.0, max(0.0, tick - time.monotonic())))
            if time.monotonic() >= tick:
                await line(start, sipp_stats(stats), gateway, api, view)
                tick += args.every
        if load.poll() is None:
            print("  ! SIPp still running past its time: stopped", flush=True)
        stop_popen(load)
        ended = time.monotonic()
        final = sipp_stats(stats)
        print(f"-- load over after {ended - start:.0f} s; then without calls:", flush=True)
        await line(start, final, gateway, api, view)
        for after in range(args.every, args.after + 1, args.every):
            await asyncio.sleep(max(0.0, ended + after - time.monotonic()))
            await line(start, final, gateway, api, view)
        if folder is not None:
            heap = await view.ask("heap")
            collections, tracked = heap.get("gc_collections"), heap.get("gc_objects")
            print(f"collections by generation so far: {collections}; objects the collector tracks: {tracked}")
            if args.collect:
                found = await view.ask("collect", wait_s=60)
                print(
                    f"gc.collect(): {found.get('unreachable')} unreachable objects;"
                    f" pymalloc blocks {found.get('py_blocks_before')} -> {found.get('py_blocks_after')},"
                    f" gateway RSS {rss_mib([gateway]):.1f} MiB"
                )
            trim = await view.ask("trim")
            print(f"malloc_trim(0): gateway RSS {trim.get('rss_before_mib')} -> {trim.get('rss_after_mib')} MiB")
            if os.environ.get("BENCH_TRACEMALLOC"):
                top = await view.ask("top", wait_s=120)
                print(f"tracemalloc: {top.get('traced_mib')} MiB traced; most grown since the load began:")
                for entry in top.get("top", []):  # type: ignore[attr-defined]
                    print("  " + str(entry))
        created, ok, failed = (final.get(k, "?") for k in ("TotalCallCreated", "SuccessfulCall(C)", "FailedCall(C)"))
        print(f"calls: {created} created, {ok} ok, {failed} failed")
        return 0 if failed == "0" else 1
    finally:
        if load is not None:
            stop_popen(load)
        await rig.close()


MAX_MINUTES = 55


def main() -> int:
    parser = argparse.ArgumentParser(description="Local calls at a steady rate through one gateway; its memory.")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=50, help="calls per second")
    parser.add_argument("--every", type=int, default=30, help="seconds between lines")
    parser.add_argument("--after", type=int, default=60, help="seconds watched once the load is over")
    parser.add_argument("--heap", action="store_true", help="the gateway's own view of its heap and tables")
    parser.add_argument("--collect", action="store_true", help="with --heap: a full gc.collect() at the end")
    args = parser.parse_args()
    if not 0 < args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes: at most {MAX_MINUTES} (the answering phone registers once, for an hour)")
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
