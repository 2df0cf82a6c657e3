"""Section 4: one real registry joining a group of 100 servers x 1,000 numbers.

The registry reads the whole group before it logs "listening", but its port answers earlier. So
each run starts a health prober (another process) and, in the last run, early watchers the moment
the port opens: the prober times event-loop stalls during the read, the early watchers see the
plan arrive as one change split into chunks, then the ``connected`` flag. The main watcher opens
after "listening", as a client waiting for a ready server would, and gets the plan as its snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import sys
import time
from collections.abc import Callable

import grpc.aio

from bench._feeds import NumbersFeed, Snapshot
from bench._harness import (
    RPC_TIMEOUT,
    BenchError,
    Child,
    Params,
    Supervisor,
    channel,
    proc_status,
    spawn_registry,
    wait_ready,
)
from bench._report import Report, pct, section
from bench._sim import close_sim, populate, sim_number
from pbxmesh.registry.v1 import registry_pb2 as pb
from pbxmesh.registry.v1 import registry_pb2_grpc as pb_grpc
from services.runtime.embedded_etcd import free_port

SYNC_WAIT = 60.0
# Registry log lines that mean the lease was, or nearly was, lost.
LEASE_TROUBLE = ("cut off from the group", "keepalive failed", "group not reachable at start")


class Probe:
    """bench/_probe.py against one address; its answers are read back from its log."""

    def __init__(self, sup: Supervisor, name: str, address: str):
        self.sup = sup
        self.child = sup.spawn(name, [sys.executable, "-m", "bench._probe", address])

    def answers(self) -> tuple[float | None, list[tuple[float, float, bool]]]:
        """(first answer, [(sent at, seconds, ok)])."""
        answered: float | None = None
        samples: list[tuple[float, float, bool]] = []
        for line in self.child.log_text().splitlines():
            fields = line.split()
            if fields[:1] == ["answered"]:
                answered = float(fields[1])
            elif fields[:1] == ["sample"] and len(fields) == 4:
                samples.append((float(fields[1]), float(fields[2]), fields[3] == "1"))
        return answered, samples

    async def wait_for(self, ready: Callable[[], bool], what: str, wait_s: float) -> None:
        for _ in range(max(1, round(wait_s / 0.02))):
            if ready():
                return
            if self.child.proc.poll() is not None:
                break
            await asyncio.sleep(0.02)
        raise BenchError(f"health probe: {what} not within {wait_s} s:\n{self.child.log_tail()}")

    def ready(self) -> bool:
        return self.child.log_text().startswith("ready")

    def answered(self) -> bool:
        return self.answers()[0] is not None

    def longest(self, start: float, end: float) -> tuple[float, int]:
        """Longest check sent between ``start`` and ``end``, and how many failed."""
        inside = [(took, ok) for sent, took, ok in self.answers()[1] if start <= sent <= end]
        return max((took for took, _ in inside), default=0.0), sum(1 for _, ok in inside if not ok)

    def stop(self) -> None:
        self.sup.stop([self.child], wait=3)


@dataclasses.dataclass
class SyncRun:
    child: Child
    address: str
    answered_after: float  # s from Popen to the port's first health answer
    listening_after: float  # s from Popen to serving (gRPC health; the group has been read)
    synced_after: float  # s from Popen until the main watcher held every number, connected
    snapshot: Snapshot  # of the main watcher
    main: NumbersFeed
    rss_kb: int  # VmRSS right after sync
    hwm_kb: int  # VmHWM right after sync
    stall_read: float  # longest health check from the port's first answer to "listening"
    stall_snapshot: float  # longest health check from "listening" to sync
    stall_window: float  # longest health check from sync to the end of the window
    failed_checks: int
    lease_trouble: dict[str, int]  # LEASE_TROUBLE line -> count, by the end of the window
    extras: list[tuple[str, NumbersFeed]]


def _complete(feed: NumbersFeed) -> bool:
    return feed.complete_at is not None


async def sync_once(
    sup: Supervisor,
    etcd_endpoint: str,
    *,
    group: str,
    sid: str,
    numbers: list[str],
    expected: int,
    early: int,
    late: int,
    window_s: float,
) -> SyncRun:
    # A port of our own choosing, so the prober and early watchers can connect before "listening";
    # the prober is up before the registry starts, or its own start-up would hide the first stalls.
    address = f"127.0.0.1:{free_port()}"
    probe = Probe(sup, f"{sid}-probe", address)
    await probe.wait_for(probe.ready, "start-up", 20)
    child = spawn_registry(sup, etcd_endpoint, sid, group=group, ttl=5, numbers=numbers, listen=address)
    extras = [(f"early watcher {k + 1}", NumbersFeed(address, target=expected)) for k in range(early)]
    for _, feed in extras:
        feed.start()
    main = NumbersFeed(address, target=expected)
    try:
        _, seen = await wait_ready(child, SYNC_WAIT)
        main.start()
        late_feeds = [(f"late watcher {k + 1}", NumbersFeed(address, target=expected)) for k in range(late)]
        for _, feed in late_feeds:
            feed.start()
        extras += late_feeds
        if not await main.wait_until(functools.partial(_complete, main), SYNC_WAIT):
            raise BenchError(f"{sid}: only {len(main.owners):,} of {expected:,} numbers after {SYNC_WAIT} s")
        status = proc_status(child.pid)
        for _, feed in extras:  # an extra that fails is reported, not fatal
            with contextlib.suppress(BenchError):
                await feed.wait_until(functools.partial(_complete, feed), SYNC_WAIT)
        # The window: does the registry stay in the group once it holds the whole plan?
        main.reset_low_water()
        await asyncio.sleep(window_s)
        window_end = time.perf_counter()
    finally:
        for _, feed in [*extras, ("main", main)]:
            await feed.close()
        probe.stop()
    answered, _ = probe.answers()
    assert main.snapshot is not None and main.complete_at is not None
    stall_read, failed_read = probe.longest(answered or child.spawned, seen)
    stall_snapshot, failed = probe.longest(seen, main.complete_at)
    stall_window, failed_window = probe.longest(main.complete_at, window_end)
    log = child.log_text()
    return SyncRun(
        child=child,
        address=address,
        answered_after=(answered or 0.0) - child.spawned,
        listening_after=seen - child.spawned,
        synced_after=main.complete_at - child.spawned,
        snapshot=main.snapshot,
        main=main,
        rss_kb=int(status.get("VmRSS", "0 kB").split()[0]),
        hwm_kb=int(status.get("VmHWM", "0 kB").split()[0]),
        stall_read=stall_read,
        stall_snapshot=stall_snapshot,
        stall_window=stall_window,
        failed_checks=failed_read + failed + failed_window,
        lease_trouble={line: log.count(line) for line in LEASE_TROUBLE},
        extras=extras,
    )


def describe_watcher(feed: NumbersFeed, spawned: float, expected: int) -> str:
    """What one extra watcher saw: its snapshot, the chunked change after it, when it was complete."""
    snap = feed.snapshot
    if snap is None:
        return f"no snapshot; {feed.error or 'no message'}"
    text = f"snapshot {snap.routes:,} routes in {snap.messages} msgs, connected={snap.connected}"
    if feed.changes:
        text += f"; then {feed.changes} changes, the longest in {feed.most_chunks} msgs"
    text += f"; largest msg {feed.largest / 1e6:.2f} MB ({feed.most_routes:,} routes)"
    if feed.misplaced_removals:
        text += f"; {feed.misplaced_removals} removals on a chunk other than the last"
    if feed.complete_at is None:
        return f"{text}; held {len(feed.owners):,} of {expected:,}, {feed.error or 'not complete'}"
    return f"{text}; all numbers and connected at {feed.complete_at - spawned:.2f} s"


async def bench_sync(report: Report, params: Params, sup: Supervisor, etcd_endpoint: str) -> None:
    total = params.sim_servers + 1
    expected = total * params.numbers_per_server
    group = "sync"
    section(
        f"4. initial sync: {total} servers x {params.numbers_per_server:,} numbers "
        f"({params.sim_servers} simulated in etcd + 1 real registry process, lease_ttl 5)"
    )
    t0 = time.perf_counter()
    sim = await populate(params, etcd_endpoint, group)
    try:
        keys = params.sim_servers * (params.numbers_per_server + 1)
        took = time.perf_counter() - t0
        report.value("4", f"populate etcd: {params.sim_servers} leases, {keys:,} keys", f"{took:.2f} s", "", "setup")
        own = [f"9{j:06d}" for j in range(params.numbers_per_server)]
        plain: list[SyncRun] = []
        crowd_early = max(1, params.crowd_watchers // 2)
        runs = [(rep, 0, 0) for rep in range(params.sync_reps)]
        runs.append((params.sync_reps, crowd_early, params.crowd_watchers - crowd_early))
        for rep, early, late in runs:
            run = await sync_once(
                sup,
                etcd_endpoint,
                group=group,
                sid=f"sync-real-{rep}",
                numbers=own,
                expected=expected,
                early=early,
                late=late,
                window_s=params.stability_window,
            )
            label = f"run {rep + 1}" + (f" (+{early + late} watchers)" if early + late else "")
            # Calls on the synced plan, once, while this registry still runs; shown after its run.
            on_plan = Report(quiet=True)
            if rep == params.sync_reps - 1:
                sample = [sim_number(i, (i * 7) % params.numbers_per_server) for i in range(1, total)]
                await plan_extras(on_plan, sup, run.address, expected, sample)
            stopped = sup.stop([run.child]).get(run.child.name)
            report_run(report, params, label, run, expected, stopped)
            report.adopt(on_plan)
            if not early + late:
                plain.append(run)
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
        report.value(
            "4",
            "simulated leases lost during the runs",
            str(sim.lost),
            "0",
            f"of {len(sim.sessions)}; {sim.keepalive_failures} keepalive failures (kept alive by the bench)",
        )
    finally:
        await close_sim(sim)


def report_run(report: Report, params: Params, label: str, run: SyncRun, expected: int, stopped: float | None) -> None:
    snap, main = run.snapshot, run.main
    stop_text = f"SIGTERM->exit {stopped:.2f} s" if stopped is not None else "SIGTERM ignored, killed"
    report.value(
        "4",
        f"{label}: start -> all {expected:,} numbers seen",
        f"{run.synced_after:.2f} s",
        "< 3 s",
        f"port answers at {run.answered_after:.2f} s, 'listening' (group read) at {run.listening_after:.2f} s; "
        f"snapshot {snap.routes:,} routes in {snap.messages} msgs (largest {main.largest / 1e6:.2f} MB), "
        f"connected={snap.connected}; RSS after sync {run.rss_kb / 1024:.0f} MiB "
        f"(peak {run.hwm_kb / 1024:.0f}); {stop_text}",
    )
    report.value(
        "4",
        f"{label}: longest registry stall (health check)",
        f"{max(run.stall_read, run.stall_snapshot) * 1000:.0f} ms",
        "",
        f"{run.stall_read * 1000:.0f} ms from the port's first answer to 'listening' (group read), "
        f"{run.stall_snapshot * 1000:.0f} ms from then to sync (snapshot), "
        f"{run.stall_window * 1000:.0f} ms in the {params.stability_window:.0f} s after; "
        f"{run.failed_checks} failed checks",
    )
    lost = sum(1 for _, up in main.flips if not up)
    trouble = ", ".join(f"'{line}' x{count}" for line, count in run.lease_trouble.items() if count)
    report.value(
        "4",
        f"{label}: lease lost (cut-offs) during/after sync",
        str(run.lease_trouble["cut off from the group"]),
        "0",
        f"registry log: {trouble or 'no lease trouble'}; connected=False on the watcher: {lost}; "
        f"fewest numbers held in the {params.stability_window:.0f} s after sync: {main.low_water:,}"
        + (f"; stream ended: {main.error}" if main.error else ""),
    )
    for name, feed in run.extras:
        done = f"{feed.complete_at - run.child.spawned:.2f} s" if feed.complete_at is not None else "-"
        report.value("4", f"{label}: {name}", done, "", describe_watcher(feed, run.child.spawned, expected))


async def plan_extras(report: Report, sup: Supervisor, address: str, expected: int, sample: list[str]) -> None:
    """Calls on the synced plan: ListNumbers (with the registry's stall meanwhile), the CLI, resolve."""
    probe = Probe(sup, "list-probe", address)
    ch = channel(address)
    stub = pb_grpc.RegistryServiceStub(ch)
    try:
        await probe.wait_for(probe.answered, "first answer", 10)
        durations: list[float] = []
        size = count = 0
        start = time.perf_counter()
        pages = 0
        for _ in range(3):
            t0 = time.perf_counter()
            size = count = pages = 0
            token = ""
            while True:  # page by page, as any client with gRPC's default 4 MiB limit must
                page = await stub.ListNumbers(pb.ListNumbersRequest(page_token=token), timeout=30)
                size, count, pages = size + page.ByteSize(), count + len(page.routes), pages + 1
                token = page.next_page_token
                if not token:
                    break
            durations.append(time.perf_counter() - t0)
        await asyncio.sleep(0.1)  # let the probe answer once more after the last call
        stall, _ = probe.longest(start, time.perf_counter())
        report.dist(
            "4",
            f"ListNumbers of the full plan ({count:,} routes, {size / 1e6:.1f} MB in {pages} pages)",
            durations,
            "",
            f"default 4 MiB client limit; longest registry stall meanwhile {stall * 1000:.0f} ms",
        )
        cli = sup.spawn("cli-numbers", [sys.executable, "-m", "services.cli", "numbers", "--registry", address])
        code = await sup.wait_exit(cli, 60)
        took = time.perf_counter() - cli.spawned
        if code is None:
            sup.stop([cli])
        lines = len(cli.log_text().splitlines())
        report.value(
            "4",
            "`pbxmesh numbers` (CLI process) on the full plan",
            f"{took:.2f} s",
            "",
            f"exit {code if code is not None else 'none: stopped after 60 s'}; {lines:,} lines printed; "
            "Python start-up included",
        )
        reqs = [pb.ResolveNumberRequest(number=n) for n in sample]
        lat: list[float] = []
        missing = 0
        for i in range(2000):
            t0 = time.perf_counter()
            try:
                await stub.ResolveNumber(reqs[i % len(reqs)], timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError:
                missing += 1
            lat.append(time.perf_counter() - t0)
        report.dist(
            "4", f"resolve, sequential, on the {expected:,}-number plan", lat, "p99 < 1 ms", f"{missing} NOT_FOUND"
        )
    finally:
        await ch.close()
        probe.stop()
