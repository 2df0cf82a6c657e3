"""Registry benchmark: prints figures (never pass/fail) for one etcd and real registry processes.

Run from the project root:  .venv/bin/python bench/registry_bench.py  [--quick] [--keep-logs]

What it does, all on 127.0.0.1:
  * starts an etcd of its own (the project's EmbeddedEtcd) with a temporary data dir,
  * starts registries as separate processes (``python -m services.cli serve registry -c FILE``),
  * measures
      1. ResolveNumber latency (sequential) and throughput (concurrent callers), next to a bare
         grpc.aio server in another process (what Python gRPC alone costs on this machine),
      2. plan convergence: UpsertNumber on A -> event on B's WatchNumbers stream,
      3. crash expiry: kill -9 of a registry -> ``left`` on another server's WatchMembers stream,
      4. initial sync of a 100 servers x 1,000 numbers group (99 simulated with the project's own
         etcd code and key layout, plus one real registry process): time, memory, the registry's
         longest event-loop stall (health checks from another process), lost leases,
  * stops everything it started (by PID: SIGTERM, bounded wait, SIGKILL), even on error.

Every loop is bounded in count and in time.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ on the path; the bench package needs the project root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gen"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
import traceback
from collections.abc import Sequence
from types import FrameType

import grpc
import grpc.aio

from bench._group import bench_convergence, bench_crash
from bench._harness import RPC_TIMEOUT, BenchError, Params, Supervisor, channel, machine_cpu, start_registry
from bench._report import Report
from bench._resolve import bench_resolve
from bench._sync import bench_sync
from pbxmesh.registry.v1 import registry_pb2 as pb
from pbxmesh.registry.v1 import registry_pb2_grpc as pb_grpc
from services.runtime.embedded_etcd import EmbeddedEtcd, etcd_binary


def etcd_version() -> str:
    try:
        argv = [str(etcd_binary()), "--version"]
        out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.splitlines()[0].removeprefix("etcd Version: ") if out else "?"


def machine_context() -> None:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    print("== machine", flush=True)
    print(f"   cores         {os.cpu_count()} online, {len(os.sched_getaffinity(0))} usable by this process ({cpu})")
    print(f"   memory        {mem}")
    print(f"   python        {platform.python_implementation()} {platform.python_version()} ({sys.executable})")
    print(f"   os            {platform.system()} {platform.release()} {platform.machine()}")
    print(f"   grpcio        {grpc.__version__}; etcd {etcd_version()}")
    print(f"   load average  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("   note          etcd, the registries, the probes and the bench client share these cores", flush=True)


async def run(params: Params, sup: Supervisor, etcd: EmbeddedEtcd) -> Report:
    # SIGTERM cancels this task rather than raising wherever the code happens to be (inside
    # grpc.aio, say): every section then closes its streams and processes on the way out. Not
    # SIGINT's path: a shell starts background jobs with SIGINT ignored.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    report = Report()
    group = "bench"
    a_numbers = [f"1{j:06d}" for j in range(params.own_numbers_ab)]
    b_numbers = [f"3{j:06d}" for j in range(params.own_numbers_ab)]
    a = await start_registry(sup, etcd.endpoint, "reg-a", group=group, ttl=5, numbers=a_numbers)
    b = await start_registry(sup, etcd.endpoint, "reg-b", group=group, ttl=5, numbers=b_numbers)
    print(
        f"   reg-a {a.address} (pid {a.pid}, 'listening' after {a.listening_after:.2f} s), "
        f"reg-b {b.address} (pid {b.pid}, {b.listening_after:.2f} s)",
        flush=True,
    )
    # A reads the group before it listens, but B joined after that: wait until A has B's numbers,
    # so that resolving a number of another server finds one.
    ch = channel(a.address)
    stub = pb_grpc.RegistryServiceStub(ch)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                await stub.ResolveNumber(pb.ResolveNumberRequest(number=b_numbers[-1]), timeout=RPC_TIMEOUT)
                break
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise BenchError(f"reg-a never saw reg-b's numbers:\n{a.child.log_tail()}") from None
                await asyncio.sleep(0.05)
    finally:
        await ch.close()

    await bench_resolve(report, params, sup, a, b)
    await bench_convergence(report, params, a, b)
    await bench_crash(report, params, sup, etcd.endpoint, observer=b, group=group)
    took = sup.stop([a.child, b.child])
    print(f"\n   stopped reg-a/reg-b with SIGTERM: exits after {', '.join(f'{v:.2f} s' for v in took.values())}")
    await bench_sync(report, params, sup, etcd.endpoint)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts, for trying the bench out")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir (configs, logs) and print it")
    args = parser.parse_args(argv)
    params = Params.quick() if args.quick else Params()

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGTERM outside the event loop (etcd start-up); run() takes it over inside.
    signal.signal(signal.SIGTERM, on_term)
    machine_context()
    workdir = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    sup = Supervisor(workdir)
    etcd = EmbeddedEtcd(data_dir=workdir / "etcd")  # its log goes to workdir/etcd.log
    code = 0
    report: Report | None = None
    started = time.perf_counter()
    cpu_start = machine_cpu()
    try:
        etcd.start()
        assert etcd.process is not None
        took = time.perf_counter() - started
        print(f"\n   etcd {etcd.endpoint} up in {took:.2f} s (pid {etcd.process.pid}, data {workdir})", flush=True)
        report = asyncio.run(run(params, sup, etcd))
    except (BenchError, RuntimeError) as exc:  # EmbeddedEtcd.start raises RuntimeError
        print(f"\n!! bench could not finish: {exc}", flush=True)
        code = 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\n!! interrupted", flush=True)
        code = 130
    except Exception:
        print("\n!! bench failed:", flush=True)
        traceback.print_exc(file=sys.stdout)
        code = 1
    finally:
        # Already on the way out, and every wait below is bounded: a second SIGTERM must not cut
        # the cleanup short and leave processes behind.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sup.stop_all()  # the registries first: they revoke their leases in etcd on the way out
        etcd.close()
        leftovers = [c for c in sup.children if c.proc.poll() is None]
        if leftovers:
            print(f"!! still running: {[(c.name, c.pid) for c in leftovers]}", flush=True)
        if args.keep_logs or code == 1:
            print(f"   logs and configs kept in {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if report is not None:
        report.summary()
        busy, steal, total = (end - begin for end, begin in zip(machine_cpu(), cpu_start, strict=True))
        print(
            f"\n   total bench time {time.perf_counter() - started:.0f} s; all processes stopped; machine CPU "
            f"busy {busy / max(1, total):.0%}, steal {steal / max(1, total):.1%} (all cores, whole run)"
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
