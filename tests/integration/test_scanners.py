"""Sipvicious against a running gateway: svmap (finding and fingerprinting SIP devices), svwar
(enumerating extensions), svcrack (cracking a password), and a flood of junk and bad proofs on the
trunk. Each tool talks through a tap (tests/harness/siptap.py) that counts its requests and which
got any answer; the counts are printed.

As the tools come (User-Agent: friendly-scanner) they get no answer at all. Their compact mode
(-c) sends no User-Agent: a scanner hiding its name. That one finds a SIP device with no name nor
version, learns no number, and has its guesses stopped by the rate limit and the lockout. All of it
on 127.0.0.1: the tools share their address with each other, as they would behind one NAT.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.runtime.config import load_config
from services.runtime.embedded_etcd import free_port
from tests.harness.config import loopback, write_config
from tests.harness.servers import Gateway, start_gateway, stop_gateway
from tests.harness.sipp import tool
from tests.harness.siptap import SipTap
from tests.harness.site import SECRET
from tests.integration.test_callstate import scrape
from tests.integration.test_trunk import _signed_invite

pytestmark = pytest.mark.timeout(240)

WEAK = ("100", "sunshine")  # in every cracking dictionary
ACCOUNTS: list[dict[str, Any]] = [
    {"number": WEAK[0], "password": WEAK[1]},
    {"number": "101", "password": "bob-secret-22", "digest_algorithms": ["SHA-256"]},
    {"number": "150", "password": "carol-secret-33"},
]
TIGHT = {"per_second": 5, "burst": 40}
DEFAULT = {"per_second": 20, "burst": 200}  # config_admission.PHONES_RATE
LOCK_FAILURES = 10  # sip.lockout's default: failures that lock an account
# The weak password 16th: beyond what the account's lock lets through.
WORDS = [f"word{n:02d}" for n in range(15)] + [WEAK[1]] + [f"more{n:02d}" for n in range(40)]


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """Prints a line in the test output even when pytest captures the rest."""

    def say(line: str) -> None:
        with capsys.disabled():
            print(f"\n  [sipvicious] {line}", end="")

    yield say
    with capsys.disabled():
        print()


async def gateway_with(tmp_path: Path, rate: dict[str, int]) -> Gateway:
    """A gateway of its own (as lone_gateway_config's) with ``ACCOUNTS``, the rate limit ``rate`` and
    its metrics served."""
    path = write_config(
        tmp_path / "alpha.yaml",
        {
            "server": {"id": "alpha", "name": "Alpha office"},
            "listen": {"registry": "127.0.0.1:0", "sip": "127.0.0.1:0", "sipgw": "127.0.0.1:0"},
            "numbering": {"numbers": [{"number": a["number"]} for a in ACCOUNTS]},
            "sip": {"accounts": ACCOUNTS, "rate_limit": rate, "drain_seconds": 2},
            "telemetry": {"metrics": {"sipgw": loopback()}},
        },
    )
    return await start_gateway(path)


@pytest.fixture
async def tight(tmp_path: Path) -> AsyncIterator[Gateway]:
    gateway = await gateway_with(tmp_path, TIGHT)
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)


@pytest.fixture
async def tap(tight: Gateway) -> AsyncIterator[SipTap]:
    relay = await SipTap(("127.0.0.1", tight.sip_port)).start()
    try:
        yield relay
    finally:
        relay.close()


def sipvicious(name: str, tap: SipTap, *args: str) -> subprocess.CompletedProcess[str]:
    """One sipvicious tool at the tap, from a port of its own on 127.0.0.1."""
    command = [
        "timeout", "150", tool(name), *args, "-p", str(tap.address[1]), "-b", "127.0.0.1", "-P", str(free_port()),
        "-x", "127.0.0.1", "127.0.0.1",
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


async def run(name: str, tap: SipTap, *args: str) -> tuple[str, float]:
    """Runs the tool; its output, and the seconds it took (what the rate limit lets through grows with it)."""
    start = time.monotonic()
    done = await asyncio.to_thread(sipvicious, name, tap, *args)
    await tap.quiet()  # the gateway's last answers through the tap
    return done.stdout + done.stderr, time.monotonic() - start


def rate_bound(rate: dict[str, int], seconds: float) -> int:
    """The most answers one address can get in ``seconds``: its burst, then the rate."""
    return int(rate["burst"] + rate["per_second"] * seconds) + 1


def metric(gateway: Gateway, name: str) -> float:
    """The sum of a metric's samples whose name (and labels, if given) start with ``name``."""
    samples = scrape(load_config(gateway.process.config, environ={}).telemetry.metrics.sipgw)
    return sum(value for key, value in samples.items() if key.startswith(name))


async def test_sipvicious_as_it_comes_gets_no_answer_at_all(tight: Gateway, tap: SipTap, report: Any) -> None:
    words = tight.process.config.parent / "words.txt"
    words.write_text("\n".join(WORDS) + "\n")
    outputs = [
        await run("svmap", tap),
        await run("svwar", tap, "-e100-199", "--force"),
        await run("svcrack", tap, "-u", WEAK[0], "-d", str(words)),
    ]
    report(f"friendly-scanner: svmap, svwar, svcrack sent {tap.sent()} requests, {tap.answered()} answered")
    assert tap.sent() >= 3 and tap.answered() == 0 and not tap.responses
    assert _svmap_name(outputs[0][0]) == "" and "found nothing" in outputs[1][0] and WEAK[1] not in outputs[2][0]
    assert metric(tight, "pbxmesh_sip_scanners_dropped_total") == tap.sent()


async def test_svmap_finds_nothing_to_fingerprint(tight: Gateway, tap: SipTap, report: Any) -> None:
    output, _ = await run("svmap", tap, "-c")  # no User-Agent: not dropped for it
    report(f"svmap -c: {tap.answered()} of {tap.sent()} OPTIONS answered; it read the device as: {_svmap_name(output)}")
    assert tap.answered("OPTIONS") == 1
    assert _svmap_name(output) == "unknown"
    assert not tap.header_names() & {"server", "user-agent", "warning", "organization"}, tap.header_names()
    assert not [r for r in tap.responses if b"pbxmesh" in r.lower() or b"sipgw" in r.lower()]


def _svmap_name(output: str) -> str:
    """The user agent svmap lists for the device ('' if it found none)."""
    rows = [line for line in output.splitlines() if line.startswith("| 127.0.0.1:")]
    return rows[0].split("|")[2].strip() if rows else ""


@pytest.mark.parametrize("method", ["REGISTER", "INVITE", "OPTIONS"])
async def test_svwar_learns_no_extension(tight: Gateway, tap: SipTap, report: Any, method: str) -> None:
    # 100-999 holds the server's three numbers; --force makes svwar go on although every number,
    # known or not, is challenged (as it first sees for a random one).
    output, seconds = await run("svwar", tap, "-c", "-m", method, "-e100-999", "--force", "--maximumtime", "3")
    sent, answered = tap.sent(method), tap.answered(method)
    report(
        f"svwar -m {method}: {sent} guesses sent, {answered} answered ({dict(tap.statuses(method))}), "
        f"{sent - answered} dropped in {seconds:.1f} s; extensions found: {_found(output)}"
    )
    assert "found nothing" in output and not _found(output), output[-2000:]
    assert answered <= rate_bound(TIGHT, seconds)
    assert set(tap.statuses(method)) <= {200, 401, 407}


def _found(output: str) -> list[str]:
    return [line for line in output.splitlines() if "exists" in line or "reqauth" in line or "noauth" in line]


async def test_svwar_against_the_default_limit(tmp_path: Path, report: Any) -> None:
    gateway = await gateway_with(tmp_path, DEFAULT)
    relay = await SipTap(("127.0.0.1", gateway.sip_port)).start()
    try:
        output, seconds = await run("svwar", relay, "-c", "-m", "OPTIONS", "-e100-999", "--maximumtime", "3")
    finally:
        relay.close()
        await stop_gateway(gateway)
    sent, answered = relay.sent("OPTIONS"), relay.answered("OPTIONS")
    report(f"svwar -m OPTIONS, default limit: {sent} guesses sent, {answered} answered in {seconds:.1f} s")
    assert "found nothing" in output and not _found(output)
    assert answered <= rate_bound(DEFAULT, seconds) and answered < sent


@pytest.mark.parametrize("user", [WEAK[0], "555"], ids=["existing", "not-existing"])
async def test_svcrack_meets_the_lock_before_the_weak_password(tmp_path: Path, report: Any, user: str) -> None:
    # At the default rate limit every guess up to the lock is answered, in the dictionary's order:
    # the lock comes at the 10th wrong one, the weak password 16th is never looked at. (Under a
    # tighter limit guesses are dropped unanswered and the lock counts only those answered; the
    # test below.) Then even the right password alone gets no answer while the account is locked.
    gateway = await gateway_with(tmp_path, DEFAULT)
    tap = await SipTap(("127.0.0.1", gateway.sip_port)).start()
    try:
        words = tmp_path / "words.txt"
        words.write_text("\n".join(WORDS) + "\n")
        output, seconds = await run("svcrack", tap, "-c", "-u", user, "-d", str(words), "--maximumtime", "6")
        guesses, answered = tap.sent("REGISTER", guesses=True), tap.answered("REGISTER", guesses=True)
        statuses = dict(tap.statuses("REGISTER", True))
        locked = metric(gateway, "pbxmesh_sip_locked_accounts")
        weak = tmp_path / "weak.txt"
        weak.write_text(WEAK[1] + "\n")
        before = tap.answered()  # svcrack waited 6 s without an answer: no delayed answer is left
        again, _ = await run("svcrack", tap, "-c", "-u", user, "-d", str(weak), "--maximumtime", "3")
        after = tap.answered()
    finally:
        tap.close()
        await stop_gateway(gateway)
    report(
        f"svcrack -u {user}: {guesses} guesses sent, {answered} answered {statuses} in {seconds:.1f} s; "
        f"then the right password alone: {after - before} answers"
    )
    assert WEAK[1] not in output + again and "password for" not in output + again
    assert set(statuses) <= {403}  # the same for a number that does not exist
    assert answered <= LOCK_FAILURES and locked == 1
    assert after == before  # locked: not even a challenge


async def test_svcrack_under_a_tight_limit_gets_fewer_answers_still(tight: Gateway, tap: SipTap, report: Any) -> None:
    words = tight.process.config.parent / "words.txt"
    words.write_text("\n".join(w for w in WORDS if w != WEAK[1]) + "\n")
    output, seconds = await run("svcrack", tap, "-c", "-u", WEAK[0], "-d", str(words), "--maximumtime", "6")
    guesses, answered = tap.sent("REGISTER", guesses=True), tap.answered("REGISTER", guesses=True)
    challenges = tap.answered("REGISTER", guesses=False)
    report(
        f"svcrack -u {WEAK[0]}, tight limit: {guesses} guesses sent, {answered} answered "
        f"{dict(tap.statuses('REGISTER', True))}, {challenges} of {tap.sent('REGISTER', False)} challenge "
        f"requests answered, in {seconds:.1f} s"
    )
    assert "password for" not in output
    assert set(tap.statuses("REGISTER", guesses=True)) <= {403}
    assert answered <= LOCK_FAILURES  # the account's lock, whatever the rate
    assert answered + challenges <= rate_bound(TIGHT, seconds)
    assert metric(tight, "pbxmesh_sip_rate_limited_total") > 0


async def test_a_flood_of_junk_and_bad_proofs_on_the_trunk_is_dropped_while_another_peer_is_answered(
    tmp_path: Path, report: Any
) -> None:
    rate = {"per_second": 5, "burst": 20}
    path = write_config(
        tmp_path / "beta.yaml",
        {
            "server": {"id": "beta"},
            "listen": {"registry": "127.0.0.1:0", "sip": "127.0.0.1:0", "sipgw": "127.0.0.1:0", "trunk": "127.0.0.1:0"},
            "numbering": {"numbers": [{"number": "200"}]},
            "sip": {"accounts": [{"number": "200", "password": "carol-pw-200"}], "drain_seconds": 2},
            "trunk": {"secret": SECRET, "rate_limit": rate},
            "telemetry": {"metrics": {"sipgw": loopback()}},
        },
    )
    gateway = await start_gateway(path)
    host, _, port = load_config(path, environ={}).listen.trunk.rpartition(":")
    trunk = (host, int(port))
    flooder, peer = _udp("127.0.0.1"), _udp("127.0.0.2")
    try:
        start = time.monotonic()
        sent = 0
        for n in range(500):
            flooder.sendto(b"\x16\x03\x01junk" + bytes(n % 256 for _ in range(40)), trunk)  # not SIP at all
            flooder.sendto(_badly_signed(trunk, n), trunk)
            sent += 2
        # The flooder's own signed OPTIONS, right behind its flood, is dropped like the rest: every
        # trunk request counts, signed or not. Another peer's (the trunk's liveness check) is answered.
        flooder.sendto(_signed_options(trunk, "flood1"), trunk)
        flood_answers = await asyncio.to_thread(_drain, flooder, 1.0)
        seconds = time.monotonic() - start
        peer.sendto(_signed_options(trunk, "peer1"), trunk)
        peer_answers = await asyncio.to_thread(_drain, peer, 2.0)
        limited = metric(gateway, 'pbxmesh_sip_rate_limited_total{method="invite",port="trunk"}')
        proofs_checked = metric(gateway, "pbxmesh_trunk_refused_requests_total")
    finally:
        flooder.close()
        peer.close()
        await stop_gateway(gateway)
    # Each 403 to an INVITE is resent until its ACK (RFC 3261 Timer G): count the requests answered.
    answered = {_branch(a) for a in flood_answers}
    report(
        f"trunk flood: {sent} junk and badly signed requests from one address in {seconds:.1f} s: "
        f"{len(answered)} answered ({len(flood_answers)} datagrams back), {proofs_checked:.0f} proofs checked, "
        f"{limited:.0f} INVITEs dropped unparsed or unchecked; another peer's OPTIONS: "
        f"{[a.split(b' ', 2)[1].decode() for a in peer_answers]}"
    )
    assert len(answered) <= rate_bound(rate, seconds)
    assert all(a.startswith(b"SIP/2.0 403") for a in flood_answers)  # the flooder's OPTIONS got nothing
    assert proofs_checked <= rate_bound(rate, seconds)  # no HMAC was done for the rest
    assert limited >= 500 - rate_bound(rate, seconds)
    assert [a.split(b"\r\n", 1)[0] for a in peer_answers] == [b"SIP/2.0 200 OK"]
    assert b"X-Pbxmesh-Instance" in peer_answers[0]


def _branch(message: bytes) -> bytes:
    found = re.search(rb"branch=([^;,\r]+)", message)
    return found.group(1) if found else b""


def _udp(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


def _drain(sock: socket.socket, quiet: float) -> list[bytes]:
    """What arrives until ``quiet`` seconds pass without anything."""
    got = []
    sock.settimeout(quiet)
    try:
        while True:
            got.append(sock.recv(65536))
    except TimeoutError:
        return got


def _badly_signed(trunk: tuple[str, int], n: int) -> bytes:
    good = _signed_invite(f"{trunk[0]}:{trunk[1]}", "200", f"flood{n}")
    return good.replace(b"sig=", b"sig=AAAA", 1)


def _signed_options(trunk: tuple[str, int], branch: str) -> bytes:
    """A trunk liveness OPTIONS as a server of the group sends it: signed with the group's secret."""
    from services.sipgw.auth.trunk_proof import TrunkProof

    uri = f"sip:ping@{trunk[0]}:{trunk[1]}"
    proof = TrunkProof(SECRET).sign(
        "OPTIONS", uri, f"{branch}@127.0.0.2", "1 OPTIONS", f"t{branch}", f"z9hG4bK{branch}", b"", "\n\n\n\n\n"
    )
    return (
        f"OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5999;branch=z9hG4bK{branch};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:alpha@127.0.0.2>;tag=t{branch}\r\nTo: <sip:ping@{trunk[0]}>\r\n"
        f"Call-ID: {branch}@127.0.0.2\r\nCSeq: 1 OPTIONS\r\nX-Pbxmesh-Trunk: {proof}\r\nContent-Length: 0\r\n\r\n"
    ).encode()
