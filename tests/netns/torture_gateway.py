"""Runs inside a loopback-only network namespace (see tests/integration/test_netns.py).

The RFC 4475 messages name foreign hosts (example.com, 192.0.2.x): a gateway that wrongly sent
anything toward them would find no route here. Each message goes to a real gateway process over
UDP; the broken requests that can be answered must get their 400 or 505, the rest must be handled
or dropped, and the gateway must still answer OPTIONS at the end. Exit code 0 means all of that held.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "gen"))
sys.path.insert(0, str(REPO))

from tests.harness.process import ServiceProcess, child_env  # noqa: E402
from tests.unit.sipgw.test_rfc4475 import INVALID, VALID  # noqa: E402

CONFIG = """
server: {id: torture}
listen: {registry: "127.0.0.1:50051", sip: "127.0.0.1:5060", sipgw: "127.0.0.1:50061"}
numbering: {numbers: [{number: "100"}]}
sip: {accounts: [{number: "100", password: "torture-pw-1"}]}
"""


def answers(sock: socket.socket, data: bytes, wait: float) -> list[bytes]:
    sock.sendto(data, ("127.0.0.1", 5060))
    got: list[bytes] = []
    sock.settimeout(wait)
    try:
        while True:
            got.append(sock.recv(65536))
            sock.settimeout(0.05)
    except TimeoutError:
        return got


def main() -> int:
    path = Path(tempfile.mkdtemp()) / "torture.yaml"
    path.write_text(CONFIG)
    gateway = ServiceProcess("sipgw", path, env=child_env()).spawn()
    try:
        asyncio.run(gateway.wait_ready(20))
    except BaseException:
        gateway.stop_blocking()
        raise
    failures: list[str] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        for name, (message, _, can_reply, status) in INVALID.items():
            got = answers(sock, message, 0.5 if can_reply else 0.2)
            expected = f"SIP/2.0 {status} ".encode()
            if can_reply and not any(g.startswith(expected) for g in got):
                failures.append(f"{name}: expected {status}, got {[g[:30] for g in got]}")
            if not can_reply and got:
                failures.append(f"{name}: expected no answer, got {got[0][:30]!r}")
        for name, message in VALID.items():
            answers(sock, message, 0.1)
            if gateway.returncode is not None:
                failures.append(f"{name}: the gateway died")
                break
        ping = (
            b"OPTIONS sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKalive\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:100@127.0.0.1>\r\n"
            b"Call-ID: alive@torture\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        if not any(g.startswith(b"SIP/2.0 200") for g in answers(sock, ping, 1.0)):
            failures.append("the gateway no longer answers OPTIONS")
    finally:
        sock.close()
        gateway.stop_blocking()
    for failure in failures:
        print("FAILED", failure)
    print(f"torture: {len(INVALID)} invalid and {len(VALID)} valid RFC 4475 messages, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
