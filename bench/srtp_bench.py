"""What SRTP costs the media relay per packet, against plain RTP, in the same run.

The path between two servers' media services, on this machine's loopback: a phone's packet comes
into leg a, goes out of leg b to the wire, comes into the other server's leg c, and out of leg d
to the other phone (alice -> a -> b => c -> d -> bob). Run once with plain RTP between b and c
and once with SRTP (AES_CM_128_HMAC_SHA1_80, libsrtp, as when the trunk is TLS): the process's CPU
per packet through both servers (two relays, one encryption and one decryption per packet with
SRTP), and what that makes per call (G.711, 50 packets a second each way). The sockets and the
loop driving them are the same in both runs, so the difference is SRTP's.

    .venv/bin/python bench/srtp_bench.py [--packets 200000]
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gen"))
sys.path.insert(0, str(ROOT))

from services.media import rtp  # noqa: E402
from services.media.legs import Leg, bind_pair  # noqa: E402
from services.runtime.embedded_etcd import free_port  # noqa: E402

PCMU = [(0, "PCMU", 8000)]
PACKETS_PER_CALL = 100  # 50 a second each way


def party() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def leg(name: str, remote: socket.socket) -> Leg:
    port = free_port(2)
    rtp_sock, rtcp_sock = bind_pair("127.0.0.1", port)
    made = Leg(name, "127.0.0.1", port, "bench", rtp_sock, rtcp_sock)
    remote_port = remote.getsockname()[1]
    made.set_remote("127.0.0.1", remote_port, remote_port + 1, PCMU, "sendrecv")
    return made


def run(packets: int, srtp: bool) -> float:
    """CPU seconds per packet through the two relays."""
    alice, wire, bob = party(), party(), party()
    a, b, c, d = leg("a", alice), leg("b", wire), leg("c", wire), leg("d", bob)
    if srtp:
        b_key, c_key = os.urandom(30), os.urandom(30)
        b.set_srtp(b_key, c_key)
        c.set_srtp(c_key, b_key)
    for near, far in ((a, b), (c, d)):
        near.connect(far, "bench", home=True)
        far.connect(near, "bench", home=False)
    assert a.rtp is not None and c.rtp is not None
    payload = bytes(range(160))
    start = time.process_time()
    for n in range(packets):
        alice.sendto(rtp.build(0, False, n & 0xFFFF, n * 160 & 0xFFFFFFFF, 7, payload), ("127.0.0.1", a.port))
        select.select([a.rtp], [], [], 1)
        a.fast.read_rtp()
        data = wire.recv(2048)
        wire.sendto(data, ("127.0.0.1", c.port))
        select.select([c.rtp], [], [], 1)
        c.fast.read_rtp()
        bob.recv(2048)
    took = time.process_time() - start
    assert d.fast.packets_out == packets, d.fast.packets_out
    for each in (a, b, c, d):
        each.close()
    for sock in (alice, wire, bob):
        sock.close()
    return took / packets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=200_000)
    args = parser.parse_args()
    print(f"== SRTP between two media services: {args.packets} packets, {os.cpu_count()} cores")
    run(2000, True)  # warm up (imports, first allocations)
    plain, sealed = run(args.packets, False), run(args.packets, True)
    print(f"{'':<10} {'us/packet (loop + 2 relays)':>28} {'added by SRTP, us':>18} {'CPU ms/s per call':>18}")
    for name, cost in (("plain RTP", plain), ("SRTP", sealed)):
        added = f"{(cost - plain) * 1e6:.2f}" if name == "SRTP" else "-"
        per_call = cost * PACKETS_PER_CALL * 1000
        print(f"{name:<10} {cost * 1e6:>28.2f} {added:>18} {per_call:>18.2f}")
    print("(SRTP's cost per packet is one encryption on one server and one decryption on the other)")


if __name__ == "__main__":
    main()
