"""SIP gateway figures: calls at rising rates with SIPp on both ends, three ways.

1. The ceiling: SIPp's caller straight to SIPp's answering phone, no gateway (what SIPp itself
   manages on this machine).
2. Local calls through one gateway: the caller authenticates (407) on every call, the gateway
   answers leg A and rings leg B.
3. Trunk calls across two gateways (each with its registry, on one embedded etcd): phone on alpha
   -> alpha's gateway -> trunk -> beta's gateway -> phone on beta.
4. and 5. The same as 2 and 3 with each server's callstate beside its gateway, first with direct
   media (4, 5), then with the media anchored on each server's media service and recorded (4m,
   5m): what anchoring adds to call set-up, in the same run. SIPp's phones send no RTP: the cost
   measured is the signalling, the legs and the recordings' bookkeeping.
6. Trunk calls between two servers with callstates, plain (6) and with mutual TLS on every gRPC
   link and the trunk over TLS (6t), in the same run: the first call to the peer against the 20
   after it, what a new TLS connection to the trunk costs, and set-up and CPU at rising rates.

Per rate: calls attempted, succeeded, failed, and the call-setup time (from the call's first
INVITE to its 200 OK, through the 407 challenge where there is one: SIPp's response time 1, in
whole milliseconds) p50/p99, measured by SIPp. Then the highest rate with no failed call.
Not part of `make test`.

    .venv/bin/python bench/sipgw_bench.py [--rates 100,300,500,800] [--calls 1000] [--sections 1,2,3,4,5,6]

BENCH_LOGS=DIR keeps the services' logs there; BENCH_PROFILE=DIR writes a cProfile of each there.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gen"))
sys.path.insert(0, str(ROOT))

from services.runtime.config import load_config  # noqa: E402
from services.runtime.embedded_etcd import EmbeddedEtcd, free_port  # noqa: E402
from services.runtime.pki import init_ca, issue  # noqa: E402
from tests.harness.process import ServiceProcess, start_all, stop_all, stop_popen  # noqa: E402
from tests.harness.servers import registry_has_numbers  # noqa: E402
from tests.harness.sipp import wait_phone_bound  # noqa: E402
from tests.harness.tls import channel, secure  # noqa: E402
from tests.harness.wait import wait_for  # noqa: E402

SIPP_DIR = ROOT / "tests" / "integration" / "sipp"
SECRET = "bench-trunk-secret-0123456789"
CALLER = ("100", "bench-pw-100")
CALLEE = ("101", "bench-pw-101")


# SIPp's caller is every phone of a large site behind one address, at hundreds of calls a second:
# far over the phones' per-address limit (sip.rate_limit), which is lifted here. The trunk keeps its
# default, sized from its lines.
UNLIMITED = "{per_second: 1000000, burst: 1000000}"


def server_config(
    server_id: str,
    etcd: str,
    numbers: list[tuple[str, str]],
    trunk: str = "",
    callstate: bool = False,
    media: str = "",
    pki: Path | None = None,
    phones_rate: str = UNLIMITED,
    trunk_rate: str = "",
) -> str:
    """A server's config; ``media`` (an RTP port range) adds a callstate and a recording media service;
    ``pki`` (a CA folder) turns mutual TLS on, with a certificate of that CA; ``phones_rate`` and
    ``trunk_rate`` are sip.rate_limit and trunk.rate_limit (empty: the default)."""
    callstate = callstate or bool(media)
    listen = {
        "registry": f"127.0.0.1:{free_port()}",
        "sip": f"127.0.0.1:{free_port()}",
        "sipgw": f"127.0.0.1:{free_port()}",
    }
    if trunk:
        listen["trunk"] = trunk
    if callstate:
        listen["callstate"] = f"127.0.0.1:{free_port()}"
    if media:
        listen["media"] = f"127.0.0.1:{free_port()}"
    lines = [
        f"server: {{id: {server_id}}}",
        f'connector: {{endpoints: ["{etcd}"], group: bench, lease_ttl: 5}}',
        "listen: {" + ", ".join(f'{k}: "{v}"' for k, v in listen.items()) + "}",
        "numbering: {numbers: [" + ", ".join(f'{{number: "{n}"}}' for n, _ in numbers) + "]}",
        "sip: {accounts: ["
        + ", ".join(f'{{number: "{n}", password: "{p}"}}' for n, p in numbers)
        + "]"
        + (f", rate_limit: {phones_rate}" if phones_rate else "")
        + "}",
        f'trunk: {{secret: "{SECRET}", lines: 1000' + (f", rate_limit: {trunk_rate}" if trunk_rate else "") + "}",
    ]
    if pki is not None:
        cert, key = issue(pki, "server", server_id, hosts=("127.0.0.1",))
        lines.append(f'tls: {{ca_file: "{pki / "ca.pem"}", cert_file: "{cert}", key_file: "{key}"}}')
        secure(list(listen.values()), pki)
    if media:
        recordings = Path(tempfile.gettempdir()) / f"sipgw-bench-recordings-{server_id}-{os.getpid()}"
        lines += [f'media: {{rtp_ports: "{media}"}}', f'recording: {{dir: "{recordings}"}}']
    return "\n".join(lines) + "\n"


# A UAS for many calls: rings, answers each INVITE at once and takes its BYE.
UAS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bench uas">
  <recv request="INVITE" crlf="true"/>
  <send>
    <![CDATA[
      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpUas[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpUas[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[service]@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=uas 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0

    ]]>
  </send>
  <recv request="ACK" crlf="true"/>
  <recv request="BYE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""


def sipp(*args: str, seconds: float) -> subprocess.CompletedProcess[str]:
    command = ["timeout", str(int(seconds)), shutil.which("sipp") or "sipp", *args, "-nostdin", "-buff_size", "4194304"]
    return subprocess.run(command, capture_output=True, text=True, cwd=tempfile.gettempdir())


def run_load(
    target: str, scenario: Path, rate: int, calls: int, extra: list[str], called: str = CALLEE[0]
) -> dict[str, str]:
    """One SIPp UAC run calling ``called``; returns the last row of its statistics file."""
    workdir = Path(tempfile.mkdtemp(prefix="sipgw-bench-"))
    stats = workdir / "stats.csv"
    port = free_port()
    sipp(
        target, "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port), "-s", called, "-key", "caller", CALLER[0],
        "-r", str(rate), "-m", str(calls), "-l", str(rate * 2), "-timeout", "60s",
        "-trace_stat", "-stf", str(stats), "-fd", "1", "-trace_rtt", "-rtt_freq", "1", *extra,
        seconds=calls / rate + 60,
    )  # fmt: skip
    rows = list(csv.DictReader(stats.open(), delimiter=";")) if stats.exists() else []
    rtt = sorted(_rtts(workdir))
    result = rows[-1] if rows else {}
    result["p50"] = f"{rtt[len(rtt) // 2]:.1f}" if rtt else "-"
    result["p99"] = f"{rtt[min(len(rtt) - 1, int(len(rtt) * 0.99))]:.1f}" if rtt else "-"
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def _rtts(workdir: Path) -> list[float]:
    values: list[float] = []
    for path in list(workdir.glob("*_rtt.csv")) + list(Path(tempfile.gettempdir()).glob("*_rtt.csv")):
        for row in csv.DictReader(path.open(), delimiter=";"):
            text = row.get("response_time_ms", "")
            if text:
                values.append(float(text))
        path.unlink()
    return values


class Rig:
    """The processes one section runs; all stopped by ``close``."""

    def __init__(self) -> None:
        self.services: list[ServiceProcess] = []
        self.phones: list[subprocess.Popen[bytes]] = []
        self.gateways: list[int] = []  # pids whose CPU time each call costs
        self.callstates: list[int] = []
        self.medias: list[int] = []
        self.etcd: EmbeddedEtcd | None = None
        # The interpreter (and its options) each service runs under; a soak wraps the gateway.
        self.python_of: dict[str, list[str]] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="sipgw-bench-"))

    def serve(self, service: str, config: str, name: str) -> ServiceProcess:
        """``pbxmesh serve SERVICE`` on ``config`` (text), to be started."""
        path = self.tmp / f"{name}.yaml"
        path.write_text(config)
        # Logs are kept only when asked (BENCH_LOGS=dir): writing them costs the services time.
        logs = os.environ.get("BENCH_LOGS")
        # A CPU profile of each service when asked (BENCH_PROFILE=dir; read with pstats): where a
        # call's time goes. Profiling slows the services down: its figures are not the real ones.
        profiles = os.environ.get("BENCH_PROFILE")
        profile = ["-m", "cProfile", "-o", str(Path(profiles) / f"{name}.prof")] if profiles else []
        process = ServiceProcess(
            service,
            path,
            name=name,
            env={k: v for k, v in os.environ.items() if not k.startswith("PBXMESH_")},
            log_file=Path(logs) / f"{name}.log" if logs else None,
            keep_log=False,
            python=[*self.python_of.get(service, [sys.executable]), *profile],
        )
        self.services.append(process)
        return process

    async def servers(self, configs: dict[str, str], services: tuple[str, ...]) -> None:
        """An embedded etcd, then ``services`` for each named config (one group); returns once all
        serve and each registry has every server's numbers."""
        self.etcd = EmbeddedEtcd()
        self.etcd.start()
        started = []
        for name, config in configs.items():
            for service in services:
                started.append(self.serve(service, config.replace("ETCD", self.etcd.endpoint), f"{name}-{service}"))
        await start_all(started, timeout=30)
        self.gateways += [p.pid for p in started if p.service == "sipgw"]
        self.callstates += [p.pid for p in started if p.service == "callstate"]
        self.medias += [p.pid for p in started if p.service == "media"]
        numbers = {n.number for p in started for n in load_config(p.config, environ={}).numbering.numbers}
        for registry in (p for p in started if p.service == "registry"):
            await wait_for(
                lambda address=registry.address: registry_has_numbers(address, numbers),  # type: ignore[misc]
                timeout=30,
                what=f"the whole plan on {registry.name}",
            )

    def answering_phone(self, target: str, number: tuple[str, str] | None) -> None:
        """A SIPp phone answering every call, returned once it holds its port; registered on
        ``target`` first when ``number`` is given."""
        uas_port = free_port()
        uas_file = self.tmp / "uas.xml"
        uas_file.write_text(UAS)
        if number is not None:
            # Registered for an hour (the most a binding lasts): a soak outlives the tests' 300 s.
            register_file = self.tmp / "register.xml"
            register_file.write_text((SIPP_DIR / "register.xml").read_text().replace("Expires: 300", "Expires: 3600"))
            registered = sipp(
                target, "-sf", str(register_file), "-i", "127.0.0.1", "-p", str(uas_port), "-m", "1",
                "-s", number[0], "-au", number[0], "-ap", number[1], "-timeout", "10s", seconds=20,
            )  # fmt: skip
            if registered.returncode != 0:
                raise SystemExit("the answering phone could not register: " + registered.stdout[-500:])
        self.uas_port = uas_port
        phone = subprocess.Popen(
            [
                shutil.which("sipp") or "sipp", "-sf", str(uas_file), "-i", "127.0.0.1", "-p", str(uas_port),
                "-s", "101", "-nostdin", "-buff_size", "4194304",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tempfile.gettempdir(),
        )  # fmt: skip
        self.phones.append(phone)
        wait_phone_bound(phone.pid, uas_port)

    async def close(self) -> None:
        for phone in self.phones:
            stop_popen(phone)
        await stop_all(self.services)
        if self.etcd is not None:
            self.etcd.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(pids: list[int]) -> float:
    return (
        sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) for pid in pids) * os.sysconf("SC_PAGE_SIZE") / 2**20
    )


def table(
    title: str,
    target: str,
    scenario: Path,
    rates: list[int],
    calls: int,
    extra: list[str],
    gateways: list[int],
    who: str = "gw",
    called: str = "",
) -> None:
    """``gateways``: the pids whose CPU and RSS are shown (``who`` names them in the header)."""
    print(f"\n== {title}")
    print(
        f"{'rate/s':>7} {'calls':>6} {'ok':>6} {'failed':>7} {'setup p50 ms':>13} {'setup p99 ms':>13}"
        f" {who + ' CPU ms/call':>15} {who + ' RSS MiB':>11}"
    )
    clean = 0
    for rate in rates:
        before = cpu_seconds(gateways)
        row = run_load(target, scenario, rate, calls, extra, called or CALLEE[0])
        cost = f"{(cpu_seconds(gateways) - before) * 1000 / calls:.2f}" if gateways else "-"
        rss = f"{rss_mib(gateways):.0f}" if gateways else "-"
        failed = row.get("FailedCall(C)", "-")
        ok = row.get("SuccessfulCall(C)", "-")
        print(
            f"{rate:>7} {row.get('TotalCallCreated', '-'):>6} {ok:>6} {failed:>7} {row['p50']:>13} {row['p99']:>13}"
            f" {cost:>15} {rss:>11}"
        )
        if failed == "0" and ok == str(calls):
            clean = max(clean, rate)
    print(f"highest rate with no failed call: {clean or 'none'} calls/s")


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="100,300,500,800")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--sections", default="1,2,3,4,5,6,7")
    parser.add_argument("--tls-rates", default="25,50,100", help="section 6's rates")
    parser.add_argument("--ceiling-rates", default="500,1500,3000", help="section 1's rates (SIPp alone goes far)")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    sections = set(args.sections.split(","))
    print(f"== machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; {args.calls} calls per rate")
    caller_auth = ["-au", CALLER[0], "-ap", CALLER[1]]
    if "1" in sections:
        rig = Rig()
        try:
            rig.answering_phone("127.0.0.1:9", None)
            target = f"127.0.0.1:{rig.uas_port}"
            table(
                "1. ceiling: SIPp caller -> SIPp phone, no gateway",
                target,
                ROOT / "bench" / "sipp" / "caller_plain.xml",
                [int(r) for r in args.ceiling_rates.split(",")],
                args.calls,
                [],
                [],
            )
        finally:
            await rig.close()
    if "2" in sections:
        rig = Rig()
        try:
            config = server_config("bench", "ETCD", [CALLER, CALLEE])
            await rig.servers({"bench": config}, ("registry", "sipgw"))
            target = listen_of(config, "sip")
            rig.answering_phone(target, CALLEE)
            table(
                "2. local calls through one gateway (407 on every call)",
                target,
                SIPP_DIR / "caller.xml",
                rates,
                args.calls,
                caller_auth,
                rig.gateways,
            )
        finally:
            await rig.close()
    if "3" in sections:
        rig = Rig()
        try:
            alpha = server_config("alpha", "ETCD", [CALLER], trunk=f"127.0.0.1:{free_port()}")
            beta = server_config("beta", "ETCD", [CALLEE], trunk=f"127.0.0.1:{free_port()}")
            await rig.servers({"alpha": alpha, "beta": beta}, ("registry", "sipgw"))
            rig.answering_phone(listen_of(beta, "sip"), CALLEE)
            table(
                "3. trunk calls: alpha's gateway -> trunk -> beta's gateway",
                listen_of(alpha, "sip"),
                SIPP_DIR / "caller.xml",
                rates,
                args.calls,
                caller_auth,
                rig.gateways,
            )
        finally:
            await rig.close()
    # 4 and 5: each with the callstate (recording follows it), first with direct media, then with
    # the media anchored and recorded: what anchoring adds, the rest being the same.
    for media in (False, True):
        how = "anchored on the media service and recorded" if media else "with callstate, direct media"
        services = ("registry", "callstate", "media", "sipgw") if media else ("registry", "callstate", "sipgw")
        if "4" in sections:
            rig = Rig()
            try:
                config = server_config(
                    "bench", "ETCD", [CALLER, CALLEE], callstate=True, media="40000-49999" if media else ""
                )
                await rig.servers({"bench": config}, services)
                if media:
                    await media_ready(config)
                target = listen_of(config, "sip")
                rig.answering_phone(target, CALLEE)
                title = f"4{'m' if media else ''}. local calls through one gateway, {how}"
                table(title, target, SIPP_DIR / "caller.xml", rates, args.calls, caller_auth, rig.gateways)
            finally:
                await rig.close()
        if "5" in sections:
            rig = Rig()
            try:
                alpha, beta = (
                    server_config(
                        name, "ETCD", [number], f"127.0.0.1:{free_port()}", callstate=True, media=ports if media else ""
                    )
                    for name, number, ports in (("alpha", CALLER, "40000-44999"), ("beta", CALLEE, "45000-49999"))
                )
                await rig.servers({"alpha": alpha, "beta": beta}, services)
                for config in (alpha, beta) if media else ():
                    await media_ready(config)
                rig.answering_phone(listen_of(beta, "sip"), CALLEE)
                title = f"5{'m' if media else ''}. trunk calls, each server {how}"
                table(
                    title,
                    listen_of(alpha, "sip"),
                    SIPP_DIR / "caller.xml",
                    rates,
                    args.calls,
                    caller_auth,
                    rig.gateways,
                )
            finally:
                await rig.close()
    if "6" in sections:
        await tls_section([int(r) for r in args.tls_rates.split(",")], args.calls, caller_auth)
    if "7" in sections:
        await external_section(rates, args.calls, caller_auth)
    return 0


async def external_section(rates: list[int], calls: int, caller_auth: list[str]) -> None:
    """The same caller on alpha, in the same run: an internal call to beta's phone over the trunk,
    then an external call over the trunk to the router server, out through its provider (a SIPp
    answering every INVITE, as a provider's edge would)."""
    rig = Rig()
    try:
        rig.answering_phone("127.0.0.1:9", None)
        provider = f"127.0.0.1:{rig.uas_port}"
        unlimited = 100_000
        alpha = server_config("alpha", "ETCD", [CALLER], trunk=f"127.0.0.1:{free_port()}")
        beta = server_config("beta", "ETCD", [CALLEE], trunk=f"127.0.0.1:{free_port()}")
        router = server_config("router", "ETCD", [("301", "bench-pw-301")], trunk=f"127.0.0.1:{free_port()}")
        router += (
            f'providers: [{{name: carrier, address: "{provider}", lines: 10000, allow_from: ["127.0.0.9"]}}]\n'
            'routes: [{pattern: "^9\\\\d{3}$", provider: carrier}]\n'
            f"external: {{calls_per_number: {unlimited}, calls_per_server: {unlimited},"
            f" per_minute_per_number: {unlimited}, per_minute_per_server: {unlimited}}}\n"
        )
        alpha += (
            f"external: {{calls_per_number: {unlimited}, calls_per_server: {unlimited},"
            f" per_minute_per_number: {unlimited}, per_minute_per_server: {unlimited}}}\n"
        )
        await rig.servers({"alpha": alpha, "beta": beta, "router": router}, ("registry", "sipgw"))
        rig.answering_phone(listen_of(beta, "sip"), CALLEE)
        await _external_route_ready(listen_of(alpha, "registry"))
        target = listen_of(alpha, "sip")
        table(
            "7a. internal call over the trunk: alpha -> beta's phone (same run as 7b)",
            target, SIPP_DIR / "caller.xml", rates, calls, caller_auth, rig.gateways,
        )  # fmt: skip
        table(
            "7b. external call: alpha -> trunk -> router server -> its provider (SIPp)",
            target, SIPP_DIR / "caller.xml", rates, calls, caller_auth, rig.gateways, called="9001",
        )  # fmt: skip
    finally:
        await rig.close()


async def _external_route_ready(registry: str) -> None:
    """Waits until alpha's registry lists the router server's route."""
    from pbxmesh.registry.v1 import registry_pb2 as rpb
    from pbxmesh.registry.v1 import registry_pb2_grpc as rpb_grpc

    async with channel(registry) as to_registry:
        stub = rpb_grpc.RegistryServiceStub(to_registry)
        for _ in range(100):
            if (await stub.ListExternalRoutes(rpb.ListExternalRoutesRequest(), timeout=5)).routes:
                await asyncio.sleep(0.5)  # the gateway's feed follows the registry
                return
            await asyncio.sleep(0.1)
    raise SystemExit("the router server's route never reached alpha")


async def tls_section(rates: list[int], calls: int, caller_auth: list[str]) -> None:
    """Trunk calls between two servers with callstates and anchored media, plain and then with mutual
    TLS on every gRPC link, the trunk over TLS and SRTP between the media services: what TLS + SRTP
    cost per call, and the first call to a new peer (its TLS handshake) against the calls after it.
    SIPp sends no RTP: SRTP's cost per packet is srtp_bench.py's."""
    for tls in (False, True):
        rig = Rig()
        pki = rig.tmp / "pki" if tls else None
        if pki is not None:
            init_ca(pki, "bench")
            issue(pki, "client", "harness", role="control")
        try:
            alpha, beta = (
                server_config(name, "ETCD", [number], f"127.0.0.1:{free_port()}", media=ports, pki=pki)
                for name, number, ports in (("alpha", CALLER, "40000-44999"), ("beta", CALLEE, "45000-49999"))
            )
            await rig.servers({"alpha": alpha, "beta": beta}, ("registry", "callstate", "media", "sipgw"))
            for config in (alpha, beta):
                await media_ready(config)
            rig.answering_phone(listen_of(beta, "sip"), CALLEE)
            how = "mutual TLS (gRPC links, the trunk) + SRTP between media" if tls else "plain (no TLS, RTP)"
            target = listen_of(alpha, "sip")
            first = run_load(target, SIPP_DIR / "caller.xml", 1, 1, caller_auth)
            later = run_load(target, SIPP_DIR / "caller.xml", 5, 20, caller_auth)
            print(f"\n== 6{'t' if tls else ''}. trunk calls, each server with callstate and media, {how}")
            print(f"first call to the peer: setup {first['p50']} ms; 20 calls after it: setup p50 {later['p50']} ms")
            if pki is not None:
                print(handshakes(listen_of(beta, "trunk"), pki, "alpha"))
            table(
                f"6{'t' if tls else ''}. (load) trunk calls, {how}",
                target,
                SIPP_DIR / "caller.xml",
                rates,
                calls,
                caller_auth,
                rig.gateways + rig.callstates + rig.medias,
                "gw+cs+md",
            )
        finally:
            await rig.close()


def handshakes(trunk: str, pki: Path, server_id: str, count: int = 50) -> str:
    """What one new TLS connection to a trunk costs the caller: connect + handshake, p50/p99."""
    import socket
    import ssl
    import time

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    context.load_cert_chain(str(pki / f"{server_id}.pem"), str(pki / f"{server_id}-key.pem"))
    host, port = trunk.rsplit(":", 1)
    took = []
    for _ in range(count):
        start = time.perf_counter()
        with (
            socket.create_connection((host, int(port)), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="beta"),
        ):
            took.append((time.perf_counter() - start) * 1000)
    took.sort()
    return (
        f"a new TLS connection to the trunk (connect + handshake, {count} in a row): "
        f"p50 {took[count // 2]:.1f} ms, p99 {took[min(count - 1, int(count * 0.99))]:.1f} ms"
    )


async def media_ready(config: str) -> None:
    """Until the gateway has attached to its media service (it keeps legs opened ahead)."""

    from pbxmesh.media.v1 import media_pb2 as md
    from pbxmesh.media.v1 import media_pb2_grpc as md_grpc

    async def attached() -> bool:
        async with channel(listen_of(config, "media")) as media:
            legs = (await md_grpc.MediaServiceStub(media).ListLegs(md.ListLegsRequest(), timeout=5)).legs
        return len(legs) >= 2

    await wait_for(attached, timeout=30, what="the gateway attached to its media service")


def listen_of(config: str, key: str) -> str:
    """An address a config made by server_config listens on."""
    found = re.search(rf'{key}: "([^"]+)"', config)
    assert found is not None, key
    return found.group(1)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
