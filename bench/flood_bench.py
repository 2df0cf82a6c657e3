"""What a flood from one address costs the gateway: CPU per 1000 requests answered, and per 1000
dropped by the per-address rate limit (admission.py).

One gateway (with its registry, on an embedded etcd) twice: first with the limits lifted, so that
every request is handled and answered; then with a limit of 1 a second on the phones' port and the
trunk alike, so that the whole flood but a handful is dropped: what a dropped request costs. Each
flood is ``--requests`` datagrams from one address at ``--rate`` a second; a reader counts the
datagrams that come back while it lasts.
The gateway's CPU time (user + system, /proc) is read before each flood and once it is over: for
the INVITEs, 33 s later, as each 407 or 403 to an INVITE is resent until its ACK, which a flood
never sends (RFC 3261 Timer G, for 64*T1 = 32 s). Not part of `make test`.

    .venv/bin/python bench/flood_bench.py [--requests 10000] [--rate 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gen"))
sys.path.insert(0, str(ROOT))

from bench.sipgw_bench import Rig, cpu_seconds, listen_of, server_config  # noqa: E402
from services.runtime.embedded_etcd import free_port  # noqa: E402
from services.sipgw.auth.trunk_proof import TrunkProof  # noqa: E402

LIMITED = "{per_second: 1, burst: 1}"
NUMBERS = [("100", "bench-pw-100")]
Address = tuple[str, int]


def _request(method: str, n: int, target: Address, extra: str = "") -> bytes:
    number = "100" if method != "REGISTER" else "555"
    uri = f"sip:{number}@{target[0]}:{target[1]}"
    return (
        f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKflood{n};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{number}@127.0.0.1>;tag=f{n}\r\nTo: <sip:{number}@127.0.0.1>\r\n"
        f"Call-ID: flood-{n}@127.0.0.1\r\nCSeq: 1 {method}\r\nContact: <sip:{number}@127.0.0.1:5999>\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def _bad_proof(n: int, target: Address) -> bytes:
    """A trunk INVITE signed with another secret: checked (HMAC), refused with 403."""
    proof = TrunkProof("not-the-group-secret-000").sign(
        "INVITE", f"sip:100@{target[0]}:{target[1]}", f"flood-{n}@127.0.0.1", "1 INVITE", f"f{n}",
        f"z9hG4bKflood{n}", b"", "\n\n\n\n\n",
    )  # fmt: skip
    return _request("INVITE", n, target, f"X-Pbxmesh-Trunk: {proof}\r\n")


# (what, on which port, the n-th datagram, seconds its answers go on being resent)
FLOODS: list[tuple[str, str, Callable[[int, Address], bytes], float]] = [
    ("OPTIONS (200)", "sip", lambda n, t: _request("OPTIONS", n, t), 0.0),
    ("REGISTER, no credentials (401)", "sip", lambda n, t: _request("REGISTER", n, t), 0.0),
    ("INVITE, no credentials (407)", "sip", lambda n, t: _request("INVITE", n, t), 33.0),
    (
        "REGISTER, scanner's User-Agent",
        "sip",
        lambda n, t: _request("REGISTER", n, t, "User-Agent: sipcli/v1.8\r\n"),
        0.0,
    ),
    ("junk, not SIP", "sip", lambda n, t: b"\x16\x03\x01" + n.to_bytes(4, "big") * 20, 0.0),
    ("trunk INVITE, bad proof (403)", "trunk", _bad_proof, 33.0),
]


def flood(target: Address, make: Callable[[int, Address], bytes], count: int, rate: int) -> int:
    """Sends ``count`` datagrams at ``rate`` a second from one socket; returns the answers it got."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 2**20)
    answers = 0
    done = threading.Event()

    def read() -> None:
        nonlocal answers
        sock.settimeout(0.2)
        while not done.is_set():
            try:
                sock.recv(65536)
                answers += 1
            except TimeoutError:
                continue

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    start = time.perf_counter()
    for n in range(count):
        sock.sendto(make(n, target), target)
        if n % 100 == 99:  # paced in steps of 100
            ahead = start + (n + 1) / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
    time.sleep(1.0)
    done.set()
    reader.join()
    sock.close()
    return answers


async def section(title: str, phones_rate: str, trunk_rate: str, count: int, rate: int) -> None:
    rig = Rig()
    try:
        config = server_config("flood", "ETCD", NUMBERS, f"127.0.0.1:{free_port()}", phones_rate=phones_rate,
                               trunk_rate=trunk_rate)  # fmt: skip
        await rig.servers({"flood": config}, ("registry", "sipgw"))
        print(f"\n== {title}")
        print(f"{'flood from one address':<34} {'sent':>7} {'answers':>8} {'gw CPU ms / 1000':>17}")
        for what, port, make, resent in FLOODS:
            host, _, number = listen_of(config, port).rpartition(":")
            before = cpu_seconds(rig.gateways)
            answers = await asyncio.to_thread(flood, (host, int(number)), make, count, rate)
            await asyncio.sleep(resent)
            cost = (cpu_seconds(rig.gateways) - before) * 1000 / count * 1000
            print(f"{what:<34} {count:>7} {answers:>8} {cost:>17.1f}")
            await asyncio.sleep(max(0.0, 2.0 - resent))  # the buckets fill again: each flood starts afresh
    finally:
        await rig.close()


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=2000)
    args = parser.parse_args()
    print(f"== {args.requests} datagrams per flood at {args.rate}/s from 127.0.0.1")
    unlimited = "{per_second: 1000000, burst: 1000000}"
    await section(
        "1. limits lifted: every request handled and answered", unlimited, unlimited, args.requests, args.rate
    )
    await section(f"2. limit {LIMITED} on both ports: the flood dropped", LIMITED, LIMITED, args.requests, args.rate)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
