"""The password lockout against a real cracker: sipvicious svcrack runs a dictionary at one account
of a running gateway while real phones (sipsak, SIPp) with the right passwords keep registering.

svcrack ignores -b for its source address, so it shares 127.0.0.1 with the phones: the same thing
as a guesser and real phones behind one NAT address. It runs in compact mode (-c), which sends no
User-Agent: as it comes ("friendly-scanner") it gets no answer at all (test_scanners.py), and this
is about a guesser that hides its name.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import pytest

from pbxmesh.sipgw.v1 import sipgw_pb2 as pb
from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as pb_grpc
from services.runtime.embedded_etcd import free_port
from tests.harness.config import lone_gateway_config
from tests.harness.process import REPO, child_env, with_own_code
from tests.harness.servers import Gateway, start_gateway, stop_gateway
from tests.harness.sipp import SIPP_DIR, run, tool

WEAK = ("100", "sunshine")  # a password every cracking dictionary has
PHONE = ("101", "bob-secret-22")
# The weak password 16th in the list: within what a per-source lock of 20 failures would let
# through, beyond the account's 10.
WORDS = [f"word{n:02d}" for n in range(15)] + [WEAK[1]] + [f"more{n:02d}" for n in range(40)]

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = await start_gateway(lone_gateway_config(tmp_path, (WEAK, PHONE)))
    try:
        yield gw
    finally:
        await stop_gateway(gw)


def svcrack(gateway: Gateway, user: str, dictionary: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "timeout", "120", tool("svcrack"), "-c", "-u", user, "-d", str(dictionary), "-p", str(gateway.sip_port),
            "-b", "127.0.0.1", "-P", str(free_port()), "-x", "127.0.0.1", "--maximumtime", "8", "127.0.0.1",
        ],
        capture_output=True, text=True, timeout=150,
    )  # fmt: skip


def sipsak_register(gateway: Gateway, user: str, password: str) -> subprocess.CompletedProcess[str]:
    return run(
        "timeout",
        "30",
        tool("sipsak"),
        "-U",
        "-x",
        "120",
        "-s",
        f"sip:{user}@{gateway.sip}",
        "-u",
        user,
        "-a",
        password,
    )


def sipp_register(gateway: Gateway, user: str, password: str, wait: str) -> subprocess.CompletedProcess[str]:
    return run(
        "timeout", "40", tool("sipp"), gateway.sip, "-sf", str(SIPP_DIR / "register.xml"), "-i", "127.0.0.1",
        "-p", str(free_port()), "-m", "1", "-s", user, "-au", user, "-ap", password, "-timeout", wait, "-nostdin",
    )  # fmt: skip


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``pbxmesh ARGS`` from this checkout."""
    command = [sys.executable, "-m", "services.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO, env=with_own_code(child_env()))


async def lockouts(gateway: Gateway) -> dict[tuple[str, str], pb.Lockout]:
    async with grpc.aio.insecure_channel(gateway.api) as channel:
        response = await pb_grpc.SipGatewayServiceStub(channel).ListLockouts(pb.ListLockoutsRequest(), timeout=5)
    return {(pb.LockoutKind.Name(e.kind), e.key): e for e in response.lockouts}


async def test_svcrack_cannot_crack_a_dictionary_password_while_real_phones_get_in(
    gateway: Gateway, tmp_path: Path
) -> None:
    dictionary = tmp_path / "words.txt"
    dictionary.write_text("\n".join(WORDS) + "\n")
    # The phone of 101 has registered from this address before the guessing starts.
    first = await asyncio.to_thread(sipsak_register, gateway, *PHONE)
    assert first.returncode == 0, first.stdout + first.stderr

    cracked = await asyncio.to_thread(svcrack, gateway, WEAK[0], dictionary)
    assert WEAK[1] not in cracked.stdout + cracked.stderr, cracked.stdout[-2000:]
    # The same dictionary at a number the server does not have: counted and locked alike.
    await asyncio.to_thread(svcrack, gateway, "555", dictionary)
    locked = await lockouts(gateway)
    assert {"LOCKOUT_KIND_ACCOUNT": {"100", "555"}, "LOCKOUT_KIND_SOURCE": {"127.0.0.1"}} == {
        kind: {key for k, key in locked if k == kind} for kind in ("LOCKOUT_KIND_ACCOUNT", "LOCKOUT_KIND_SOURCE")
    }
    assert locked["LOCKOUT_KIND_ACCOUNT", "100"].failures == 10 and locked["LOCKOUT_KIND_ACCOUNT", "100"].locked_for > 0
    assert "sunshine" not in "".join(gateway.log)

    # The phone of 101 behind the same (locked) address still registers with its right password.
    again = await asyncio.to_thread(sipsak_register, gateway, *PHONE)
    assert again.returncode == 0, again.stdout + again.stderr
    # The attacked account is locked even for its right password...
    refused = await asyncio.to_thread(sipp_register, gateway, *WEAK, "6s")
    assert refused.returncode != 0

    # ...until an operator unlocks it (and the address), with the CLI and the API.
    by_cli = await asyncio.to_thread(cli, "unlock", WEAK[0], "--sipgw", gateway.api)
    assert by_cli.returncode == 0 and "account cleared" in by_cli.stdout, by_cli.stdout + by_cli.stderr
    async with grpc.aio.insecure_channel(gateway.api) as channel:
        stub = pb_grpc.SipGatewayServiceStub(channel)
        unlocked = await stub.Unlock(pb.UnlockRequest(target="127.0.0.1"), timeout=5)
        assert list(unlocked.cleared) == [pb.LOCKOUT_KIND_SOURCE]
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.Unlock(pb.UnlockRequest(target="127.0.0.1"), timeout=5)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await asyncio.to_thread(cli, "lockouts", "--sipgw", gateway.api)
    assert listed.returncode == 0 and "555" in listed.stdout and "127.0.0.1" not in listed.stdout, listed.stdout
    back = await asyncio.to_thread(sipp_register, gateway, *WEAK, "20s")
    assert back.returncode == 0, back.stdout[-2000:] + back.stderr[-2000:]
    assert WEAK[0] in await gateway.registrations()
