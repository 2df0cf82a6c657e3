"""Media benchmark: concurrent two-way G.711 calls through ONE pbxmesh media worker, and the same
load through rtpengine (userspace) as the reference, in the same run.

Run from the project root:  .venv/bin/python bench/media_bench.py  [--quick] [--steps 50,100] [--seconds 10]

Each call is two RTP streams (PCMU, 160-byte payloads, 50 packets/s each way) from a load generator
written in C (``bench/rtpload.c``, built with gcc at start) so that the CPU stays with the relay.
Call counts rise step by step (a fresh relay each step) until a step loses packets; two modes:
relay only, and relay + recording. Per step: packets sent/received/lost, the relay processes' CPU
(utime + stime from /proc over the step), the relay latency (send timestamp in the payload, compared
on receipt in the same process: it includes the generator's own path, shown by a direct run without
a relay), the relay's RSS. Prints figures and targets, never pass/fail. 127.0.0.1 only; everything
started is stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gen"))
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable, Sequence  # noqa: E402
from typing import Protocol  # noqa: E402

from bench._plane_relay import PlaneRelay, plane_class  # noqa: E402
from bench._rtpengine import RtpEngine, available  # noqa: E402
from bench._rtpload import LoadResult, compile_rtpload, run_load, stream_ports  # noqa: E402

STEPS = (50, 100, 200, 300, 400, 500, 600, 700, 800)
QUICK_STEPS = (40,)
# Every port range outside the ephemeral one (32768-60999 by default), so nothing else lands there.
GENERATOR_BASE = 61000  # generator streams on 61000, 61002, ... (up to 1,100 calls)
NG_PORT = 19990
RTPENGINE_PORTS = (20000, 25999)  # 4 ports a call
PLANE_PORTS = (26000, 31999)  # 4 ports a call
MAX_CALLS = 1100
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
TARGET_RECORDED_CALLS = 300
TARGET_P99_MS = 10.0
TARGET_CAPACITY_RATIO = 0.9


class Relay(Protocol):
    label: str

    @property
    def pids(self) -> list[int]: ...
    async def open_calls(self, sides: Sequence[tuple[int, int]], *, record: bool) -> list[tuple[str, int]]: ...
    async def relayed(self) -> int | None: ...
    async def close(self) -> str: ...
    def recordings(self) -> list[Path]: ...


RelayFactory = Callable[[Path], Awaitable[Relay]]


@dataclasses.dataclass(frozen=True)
class Step:
    relay: str
    mode: str
    calls: int
    load: LoadResult
    cpu_s: float
    wall_s: float
    rss_mib: float
    files: int

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_per_packet_us(self) -> float:
        """Relay CPU per relayed packet (one receive and one send)."""
        return 1e6 * self.cpu_s / self.load.received if self.load.received else float("nan")

    @property
    def clean(self) -> bool:
        return self.load.lost == 0


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
    return total / CLOCK_TICKS


def rss_mib(pids: Sequence[int]) -> float:
    return sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) for pid in pids) * PAGE / 2**20


def udp_receive_buffer_errors() -> int:
    """The kernel's count of UDP datagrams dropped for a full receive buffer (all sockets)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    return int(dict(zip(lines[0], lines[1], strict=True))["RcvbufErrors"])


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


HEADER = (
    f"{'relay':<20} {'calls':>5} {'sent':>8} {'received':>8} {'lost':>6} {'loss %':>7} {'relayed':>8} "
    f"{'rcvbuf':>6} {'CPU %':>6} {'us/pkt':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'RSS MiB':>7} "
    f"{'gen CPU %':>9} {'other %':>7}  note"
)


def format_step(
    label: str,
    calls: int,
    load: LoadResult,
    *,
    relayed: int | None = None,
    drops: int = 0,
    cpu_s: float | None = None,
    rss: float | None = None,
    busy_s: float | None = None,
    note: str = "",
) -> str:
    wall = load.seconds
    dash = "-"
    cpu = f"{100 * cpu_s / wall:6.1f}" if cpu_s is not None else f"{dash:>6}"
    per_packet = f"{1e6 * cpu_s / load.received:6.1f}" if cpu_s is not None and load.received else f"{dash:>6}"
    memory = f"{rss:7.1f}" if rss is not None else f"{dash:>7}"
    counted = f"{relayed:>8}" if relayed is not None else f"{dash:>8}"
    # What the rest of the machine used meanwhile (other processes: a busy machine shows here).
    others = f"{dash:>7}" if busy_s is None else f"{100 * max(0.0, busy_s - (cpu_s or 0) - load.cpu_s) / wall:7.1f}"
    return (
        f"{label:<20} {calls:>5} {load.sent:>8} {load.received:>8} {load.lost:>6} {load.loss_percent:>7.3f} "
        f"{counted} {drops:>6} {cpu} {per_packet} {load.p50_us / 1000:>7.2f} {load.p99_us / 1000:>7.2f} "
        f"{load.max_us / 1000:>7.2f} {memory} {100 * load.cpu_s / wall:>9.1f} {others}  {note}"
    ).rstrip()


class Bench:
    def __init__(self, binary: Path, directory: Path, seconds: float) -> None:
        self.binary = binary
        self.directory = directory
        self.seconds = seconds
        self.runs = 0

    def sides(self, calls: int) -> list[tuple[int, int]]:
        ports = stream_ports(GENERATOR_BASE, 2 * calls)
        return [(ports[2 * i], ports[2 * i + 1]) for i in range(calls)]

    async def direct(self, calls: int) -> None:
        """The generator against itself (side A sends straight to side B): the latency floor."""
        ports = self.sides(calls)
        destinations = [("127.0.0.1", port) for a, b in ports for port in (b, a)]
        drops, busy = udp_receive_buffer_errors(), machine_busy_seconds()
        load = await run_load(self.binary, base_port=GENERATOR_BASE, destinations=destinations, seconds=self.seconds)
        drops, busy = udp_receive_buffer_errors() - drops, machine_busy_seconds() - busy
        line = format_step("direct (no relay)", calls, load, drops=drops, busy_s=busy, note="the generator's own path")
        print(line, flush=True)

    async def step(self, label: str, factory: RelayFactory, mode: str, calls: int) -> Step:
        self.runs += 1
        directory = self.directory / f"{self.runs:03d}-{label}-{mode}-{calls}"
        directory.mkdir()
        relay = await factory(directory)
        window: dict[str, float] = {}

        async def started() -> None:
            window["cpu"] = cpu_seconds(relay.pids)
            window["t"] = time.monotonic()
            window["drops"] = udp_receive_buffer_errors()
            window["busy"] = machine_busy_seconds()

        try:
            # Each relay returns once it has applied every call (rtpengine answers each offer).
            destinations = await relay.open_calls(self.sides(calls), record=mode == "recording")
            load = await run_load(
                self.binary,
                base_port=GENERATOR_BASE,
                destinations=destinations,
                seconds=self.seconds,
                on_start=started,
            )
            cpu = cpu_seconds(relay.pids) - window["cpu"]
            wall = time.monotonic() - window["t"]
            drops = udp_receive_buffer_errors() - int(window["drops"])
            busy = machine_busy_seconds() - window["busy"]
            rss = rss_mib(relay.pids)
            relayed = await relay.relayed()
        finally:
            ended = await relay.close()
        files = len(relay.recordings())
        note = []
        if mode == "recording":
            note.append(f"{files} recording files")
        if ended not in ("stopped", "exited 0"):
            note.append(ended)
        if load.foreign or load.duplicates or load.send_errors:
            note.append(f"foreign {load.foreign}, duplicates {load.duplicates}, send errors {load.send_errors}")
        line = format_step(
            label, calls, load, relayed=relayed, drops=drops, cpu_s=cpu, rss=rss, busy_s=busy, note=", ".join(note)
        )
        print(line, flush=True)
        return Step(label, mode, calls, load, cpu, wall, rss, files)


def relay_factories(threads: int, *, quick: bool) -> tuple[dict[str, RelayFactory], dict[str, str]]:
    """The relays to measure, and why any is missing."""
    factories: dict[str, RelayFactory] = {}
    missing: dict[str, str] = {}
    plane, why = plane_class()
    if plane is None:
        missing["pbxmesh"] = why
    else:

        async def pbxmesh(directory: Path) -> Relay:
            # A quick run reads the worker's counters once, not until they settle.
            return await PlaneRelay.start(directory, ports=PLANE_PORTS, counter_reports=1 if quick else 6)

        factories["pbxmesh"] = pbxmesh
    if available() is None:
        missing["rtpengine"] = "rtpengine not installed (make media-peers installs Debian's rtpengine-daemon)"
    else:

        async def rtpengine(directory: Path) -> Relay:
            return await RtpEngine.start(directory, ports=RTPENGINE_PORTS, ng_port=NG_PORT, threads=threads)

        factories["rtpengine"] = rtpengine
    return factories, missing


async def ramp(bench: Bench, factories: dict[str, RelayFactory], mode: str, steps: Sequence[int]) -> list[Step]:
    """Every relay at each call count in turn (so both see the machine alike), until a step of its loses."""
    results: list[Step] = []
    rising = set(factories)
    for calls in steps:
        for label, factory in factories.items():
            if label not in rising:
                continue
            try:
                step = await bench.step(label, factory, mode, calls)
            except Exception as error:  # a relay that fails a step is reported, and the others go on
                print(f"{label:<20} {calls:>5}  failed: {type(error).__name__}: {error}", flush=True)
                rising.discard(label)
                continue
            results.append(step)
            if not step.clean:
                rising.discard(label)
        if not rising:
            break
    return results


def best_clean(steps: Sequence[Step], relay: str, mode: str, p99_ms: float | None = None) -> Step | None:
    """The step with the most calls and no loss (and p99 within ``p99_ms`` if given)."""
    clean = [
        s
        for s in steps
        if s.relay == relay and s.mode == mode and s.clean and (p99_ms is None or s.load.p99_us <= p99_ms * 1000)
    ]
    return max(clean, key=lambda s: s.calls, default=None)


def cpu_per_packet(steps: Sequence[Step], mode: str) -> dict[str, Step]:
    """Each relay's step for the CPU comparison: the most calls both relays carried without loss."""
    per_relay = {s.relay for s in steps if s.mode == mode}
    clean_counts = [{s.calls for s in steps if s.relay == r and s.mode == mode and s.clean} for r in per_relay]
    common = set.intersection(*clean_counts) if clean_counts else set()
    chosen: dict[str, Step] = {}
    for relay in per_relay:
        candidates = [
            s for s in steps if s.relay == relay and s.mode == mode and s.clean and (not common or s.calls in common)
        ]
        best = max(candidates, key=lambda s: s.calls, default=None)
        if best is not None:
            chosen[relay] = best
    return chosen


def summary(steps: Sequence[Step], missing: dict[str, str], modes: Sequence[str]) -> None:
    print("\n== summary (pbxmesh: one media worker; rtpengine: userspace, the reference)")
    for label, why in missing.items():
        print(f"  {label}: {why}")

    def calls_of(step: Step | None) -> str:
        return str(step.calls) if step else "none"

    def calls_for(relay: str, step: Step | None) -> str:
        return "n/a" if relay in missing else calls_of(step)

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}" if a and b else "n/a"

    def number(value: float | None, digits: int) -> str:
        return f"{value:.{digits}f}" if value else "n/a"

    def row(figure: str, ours: str, theirs: str, relative: str, target: str) -> None:
        print(f"  {figure:<66} {ours:>10} {theirs:>10} {relative:>6}  {target}".rstrip())

    print(f"  {'figure':<66} {'pbxmesh':>10} {'rtpengine':>10} {'ratio':>6}  target")
    for mode in modes:
        ours, theirs = best_clean(steps, "pbxmesh", mode), best_clean(steps, "rtpengine", mode)
        row(
            f"max calls with 0 loss ({mode}; a step of the ramp)",
            calls_for("pbxmesh", ours),
            calls_for("rtpengine", theirs),
            ratio(ours.calls if ours else None, theirs.calls if theirs else None),
            f">= {TARGET_RECORDED_CALLS} per worker" if mode == "recording" else "",
        )
        chosen = cpu_per_packet(steps, mode)
        mine, ref = chosen.get("pbxmesh"), chosen.get("rtpengine")
        at = "/".join(f"{s.calls}" for s in (mine, ref) if s) or "-"
        cpp_ours = mine.cpu_per_packet_us if mine else None
        cpp_ref = ref.cpu_per_packet_us if ref else None
        row(
            f"CPU per relayed packet, us ({mode}, at {at} calls)",
            number(cpp_ours, 1),
            number(cpp_ref, 1),
            ratio(cpp_ours, cpp_ref),
            "",
        )
        capacity_ours = 1e4 / cpp_ours if cpp_ours else None  # 100 relayed packets/s per call
        capacity_ref = 1e4 / cpp_ref if cpp_ref else None
        target = f">= {TARGET_CAPACITY_RATIO} x rtpengine's" if mode == "relay" else ""
        row(
            f"relay capacity per core, calls ({mode}; 1 core / CPU per call)",
            number(capacity_ours, 0),
            number(capacity_ref, 0),
            ratio(capacity_ours, capacity_ref),
            target,
        )
    if "recording" in modes:
        ours = best_clean(steps, "pbxmesh", "recording", TARGET_P99_MS)
        theirs = best_clean(steps, "rtpengine", "recording", TARGET_P99_MS)
        row(
            f"recorded calls with 0 loss and p99 <= {TARGET_P99_MS:.0f} ms",
            calls_for("pbxmesh", ours),
            calls_for("rtpengine", theirs),
            "",
            f">= {TARGET_RECORDED_CALLS} per worker",
        )


async def run(args: argparse.Namespace) -> None:
    steps = [int(n) for n in args.steps.split(",")] if args.steps else list(QUICK_STEPS if args.quick else STEPS)
    if max(steps) > MAX_CALLS:
        raise SystemExit(f"at most {MAX_CALLS} calls: the port ranges are sized for that")
    seconds = args.seconds or (1.0 if args.quick else 10.0)
    modes = ["relay", "recording"] if args.mode == "both" else [args.mode]
    factories, missing = relay_factories(args.rtpengine_threads, quick=args.quick)
    if args.only:
        factories = {k: v for k, v in factories.items() if k == args.only}
    print(f"media bench: PCMU 20 ms (160-byte payloads, 50 packets/s each way per call), {seconds:g} s per step")
    print(f"  steps {steps}; rising stops after a step with loss; {os.cpu_count()} cores")
    print(f"  rtpengine: userspace, --num-threads={args.rtpengine_threads}; pbxmesh: one worker")
    for label, why in missing.items():
        print(f"  {label}: {why}")
    with tempfile.TemporaryDirectory(prefix="media-bench-") as tmp:
        directory = Path(tmp)
        bench = Bench(compile_rtpload(directory), directory, seconds)
        results: list[Step] = []
        for mode in modes:
            print(f"\n== {mode}{' only' if mode == 'relay' else ' (relay + recording)'}")
            print(HEADER, flush=True)
            if mode == modes[0]:
                await bench.direct(steps[min(len(steps) - 1, 3)])
            results += await ramp(bench, factories, mode, steps)
        summary(results, missing, modes)
    print(
        "\n  latency: generator send -> generator receive through the relay (the direct row is the floor); "
        "CPU: the relay's processes only; us/pkt: relay CPU per relayed packet; gen CPU: the generator's"
    )
    print(
        "  relayed: the packets the relay says it relayed (its own counters); rcvbuf: UDP datagrams the kernel "
        "dropped for a full receive buffer during the step (any socket: the relay's or the generator's); "
        "lost: not back within 300 ms after the last send (so very late packets count as lost); "
        "other %: CPU the rest of the machine used meanwhile (% of one core): figures taken beside it are contended"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"steps {QUICK_STEPS}, 1 s each: a smoke run")
    parser.add_argument("--steps", help="comma-separated call counts (default: %(default)s)", default="")
    parser.add_argument("--seconds", type=float, default=0.0, help="length of each step (default 10, quick 1)")
    parser.add_argument("--mode", choices=("relay", "recording", "both"), default="both")
    parser.add_argument("--only", choices=("pbxmesh", "rtpengine"), help="measure one relay")
    parser.add_argument("--rtpengine-threads", type=int, default=1, help="rtpengine --num-threads (default 1)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
