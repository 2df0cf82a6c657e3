"""The test provider (tests/harness/provider.py, a real Kamailio) with SIPp on both sides and no
gateway: it registers with digest, refuses a wrong password, relays an authenticated call to the
PSTN and a PSTN call to its customer, answers 503 when told to, and comes back after a kill."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.runtime.embedded_etcd import free_port
from tests.harness.provider import Provider, ProviderCall, loopback_address
from tests.harness.pstn import Answerer, customer_call, pstn_call
from tests.harness.sipp import register_phone, run, sipp_args
from tests.harness.wait import wait_for

TRUNK = ("pbx-trunk", "trunk-pw-7")  # the provider's account of its customer


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    async with Provider(dict([TRUNK])) as running:
        yield running


async def test_a_registration_with_the_right_password_is_kept(provider: Provider) -> None:
    assert not await provider.registered(TRUNK[0])
    port = await register_phone(provider, TRUNK)
    contacts = await provider.contacts(TRUNK[0])
    assert [c.address for c in contacts] == [f"sip:{TRUNK[0]}@127.0.0.1:{port}"]
    assert await provider.registered(TRUNK[0])
    assert provider.refusals() == []


@pytest.mark.parametrize("user", [TRUNK[0], "nobody"], ids=["wrong-password", "unknown-account"])
async def test_a_registration_with_wrong_credentials_is_refused(provider: Provider, user: str) -> None:
    done = await asyncio.to_thread(
        run, *sipp_args(provider, "register_refused.xml", free_port(), user, "-au", user, "-ap", "not-the-password")
    )
    assert done.returncode == 0, done.stdout[-1500:]  # 401, the answer, then 403
    assert not await provider.registered(user)
    assert [(r.method, r.user) for r in provider.refusals()] == [("REGISTER", user)]
    assert "not-the-password" not in "".join(provider.lines)


async def test_an_authenticated_call_reaches_the_pstn(provider: Provider, tmp_path: Path) -> None:
    async with Answerer(tmp_path) as pstn:
        await provider.set_pstn(pstn.address)
        done = await customer_call(provider.sip, "4930123456", TRUNK, caller="4940111222", asserted="4940999000")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + provider.log_tail()
    assert provider.calls() == [
        ProviderCall("out", "4930123456", "4940111222", "Caller 4940111222", "sip:4940999000@127.0.0.1",
                     provider.calls()[0].call_id, TRUNK[0]),
    ]  # fmt: skip
    [seen] = pstn.calls()
    assert (seen.number, seen.caller, seen.asserted_user) == ("4930123456", "4940111222", "4940999000")
    assert seen.call_id == provider.calls()[0].call_id


async def test_a_call_with_a_wrong_password_never_reaches_the_pstn(provider: Provider, tmp_path: Path) -> None:
    async with Answerer(tmp_path) as pstn:
        await provider.set_pstn(pstn.address)
        done = await customer_call(provider.sip, "4930123456", (TRUNK[0], "wrong"))
        assert done.returncode != 0  # SIPp expected the answer and got 403
        assert "403" in done.stdout + done.stderr
    assert pstn.calls() == []
    assert provider.calls() == []
    assert [(r.method, r.user) for r in provider.refusals()] == [("INVITE", TRUNK[0])]


async def test_a_pstn_call_for_a_number_reaches_the_gateway(provider: Provider, tmp_path: Path) -> None:
    async with Answerer(tmp_path) as gateway:
        await provider.set_gateway(gateway.address)
        done = await pstn_call(provider.carrier, "4930555000", "4917012345")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + provider.log_tail()
    [seen] = gateway.calls()
    assert (seen.number, seen.caller) == ("4930555000", "4917012345")
    [call] = provider.calls()
    assert (call.direction, call.number, call.from_user, call.account) == ("in", "4930555000", "4917012345", "")


async def test_an_unavailable_provider_answers_503_then_recovers(provider: Provider) -> None:
    await provider.set_unavailable()
    done = await asyncio.to_thread(
        run, *sipp_args(provider, "register.xml", free_port(), TRUNK[0], "-au", TRUNK[0], "-ap", TRUNK[1])
    )
    assert done.returncode != 0
    assert "503" in done.stdout + done.stderr
    assert not await provider.registered(TRUNK[0])
    await provider.set_unavailable(False)
    await register_phone(provider, TRUNK)
    assert await provider.registered(TRUNK[0])


async def test_a_killed_provider_is_gone_and_restarts_on_its_ports(provider: Provider) -> None:
    address = provider.sip
    provider.kill()

    async def gone() -> bool:
        """Its main process has exited and no worker of it holds its sockets."""
        return not provider.running and all(map(_udp_free, (provider.customer_port, provider.carrier_port)))

    await wait_for(gone, what="the provider and its workers to die")
    await provider.start()
    assert provider.sip == address
    await register_phone(provider, TRUNK)  # the accounts came back with it
    assert await provider.registered(TRUNK[0])


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_peers_must_be_on_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        loopback_address("192.0.2.1:5060", "pstn")
    with pytest.raises(ValueError, match="loopback"):
        Provider(gateway="example.com:5060")
    with pytest.raises(ValueError, match="password") as refused:
        Provider({"alice": "bad\npassword"})
    assert "bad" not in str(refused.value)
