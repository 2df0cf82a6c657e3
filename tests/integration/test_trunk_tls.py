"""The trunk over TLS between two servers whose config has ``tls``: a call with hold and resume
crosses it, the plain UDP trunk is gone, and the TLS listener holds against a server of the same
CA that is not a member and against a member that claims to be another."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pbxmesh.callstate.v1 import callstate_pb2 as cs
from services.runtime.embedded_etcd import free_port
from services.runtime.pki import issue
from services.sipgw.auth.trunk_proof import TrunkProof
from tests.harness.servers import Gateway, Group
from tests.harness.sipp import phones_done, register_phone, run, sipp_args, sipp_call, start_phone, stop_phones
from tests.harness.site import SECRET, Site, Spec, running_sites
from tests.integration.test_callstate import Watch
from tests.integration.test_sipgw import _invite
from tests.support import wait_for

ALICE = ("100", "alice-pw-100")
CAROL = ("200", "carol-pw-200")
FRANK = ("300", "frank-pw-300")
DAVE = ("201", "dave-pw-201")


@pytest.fixture
async def sites(group: Group) -> AsyncIterator[dict[str, Site]]:
    specs = {
        "alpha": Spec(ALICE, "sales", tls=True),
        "beta": Spec(CAROL, "support", tls=True),
        "gamma": Spec(FRANK, "stock", tls=True, callstate=False),
    }
    plans = {"alpha": {"200"}, "beta": {"100", "300"}}
    async with running_sites(group, specs, plans) as made:
        yield made


def pki_of(site: Site) -> Path:
    return site.registry.config_path.parent / "pki"


async def logged(gateway: Gateway, text: str) -> bool:
    return text in "".join(gateway.log)


def tls_exchange(trunk: str, pki: Path, server_id: str, data: bytes) -> bytes:
    """Connects to a trunk over TLS with ``server_id``'s certificate, sends ``data``, returns what
    comes back before the connection closes or 3 s pass."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    context.load_cert_chain(str(pki / f"{server_id}.pem"), str(pki / f"{server_id}-key.pem"))
    context.check_hostname = False
    host, port = trunk.split(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=3) as raw, context.wrap_socket(raw) as tls:
        tls.settimeout(3)
        try:
            tls.sendall(data)
            while not final(received):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (TimeoutError, ssl.SSLError, ConnectionError):
            pass
    finals = [m for m in received.split(b"\r\n\r\n") if m.startswith(b"SIP/2.0 ") and not m.startswith(b"SIP/2.0 1")]
    return finals[0] if finals else b""  # the final response; provisional ones skipped


def final(received: bytes) -> bool:
    """Whether a final response (not 1xx) has arrived whole."""
    return any(
        message.startswith(b"SIP/2.0 ") and not message.startswith(b"SIP/2.0 1")
        for message in received.split(b"\r\n\r\n")[:-1]
    )


def signed_invite(trunk: str, origin: str, branch: str) -> bytes:
    identity = f"<sip:100@{origin}.pbxmesh.invalid>"
    proof = TrunkProof(SECRET).sign(
        "INVITE", f"sip:{CAROL[0]}@{trunk}", f"{branch}@127.0.0.1", "1 INVITE", f"a{branch}", f"z9hG4bK{branch}",
        b"", f"{identity}\n{origin}\n\n\n\n",
    )  # fmt: skip
    headers = f"P-Asserted-Identity: {identity}\r\nX-Pbxmesh-Origin: {origin}\r\nX-Pbxmesh-Trunk: {proof}\r\n"
    return _invite(CAROL[0], branch, host=trunk, extra=headers).replace(b"SIP/2.0/UDP", b"SIP/2.0/TLS")


async def test_a_call_with_hold_crosses_the_trunk_over_tls(sites: dict[str, Site]) -> None:
    alpha, beta = sites["alpha"], sites["beta"]
    for site in (alpha, beta):
        assert await logged(site.gateway, f"trunk on {site.trunk} (TLS)")
    await sipp_call(alpha.gateway, beta.gateway, ALICE, CAROL, "caller_hold.xml", "callee_hold.xml")
    await wait_for(lambda: logged(beta.gateway, "hung up by caller"), what="the call's end on beta")
    # Nothing listens for the trunk on plain UDP any more.
    host, port = beta.trunk.split(":")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        sock.sendto(b"OPTIONS sip:beta SIP/2.0\r\nContent-Length: 0\r\n\r\n", (host, int(port)))
        with pytest.raises((TimeoutError, ConnectionRefusedError)):
            sock.recv(65536)


async def test_the_trunk_refuses_a_stranger_and_a_member_claiming_another_origin(sites: dict[str, Site]) -> None:
    beta = sites["beta"]
    pki = pki_of(beta)
    issue(pki, "server", "delta", hosts=("127.0.0.1",))  # the group's CA, but not a member
    answer = await asyncio.to_thread(tls_exchange, beta.trunk, pki, "delta", signed_invite(beta.trunk, "delta", "d1"))
    assert answer == b""
    await wait_for(lambda: logged(beta.gateway, "server delta is not a member"), what="the stranger refused")
    # Gamma is a member and knows the secret, but its connection proves gamma, not alpha.
    answer = await asyncio.to_thread(tls_exchange, beta.trunk, pki, "gamma", signed_invite(beta.trunk, "alpha", "g1"))
    assert answer.startswith(b"SIP/2.0 403"), answer[:80]
    await wait_for(
        lambda: logged(beta.gateway, "origin alpha is not the server of its TLS connection"), what="the claim refused"
    )
    # The same request in gamma's own name is taken (it rings Carol's number: no phone, so 480).
    answer = await asyncio.to_thread(tls_exchange, beta.trunk, pki, "gamma", signed_invite(beta.trunk, "gamma", "g2"))
    assert answer.startswith(b"SIP/2.0 4") and not answer.startswith(b"SIP/2.0 403"), answer[:80]


async def test_a_blind_transfer_crosses_the_trunk_over_tls(group: Group) -> None:
    specs = {"alpha": Spec(ALICE, "sales", tls=True), "beta": Spec(CAROL, "support", (DAVE,), tls=True)}
    async with running_sites(group, specs, {"alpha": {"200"}, "beta": {"100"}}) as made:
        alpha, beta = made["alpha"], made["beta"]
        watch = Watch(alpha.callstate)
        carol, dave = await register_phone(beta.gateway, CAROL), await register_phone(beta.gateway, DAVE)
        phones = [
            await start_phone(beta.gateway, "callee_refer.xml", carol, CAROL[0], "-key", "refer_to", DAVE[0]),
            await start_phone(beta.gateway, "callee.xml", dave, DAVE[0]),
        ]
        try:
            await asyncio.wait_for(watch.synced.wait(), 5)
            calling = await asyncio.to_thread(
                run, *sipp_args(alpha.gateway, "caller_transferred.xml", free_port(), CAROL[0], "-au", ALICE[0],
                                "-ap", ALICE[1]),
            )  # fmt: skip
            assert calling.returncode == 0, calling.stdout[-3000:]
            assert await phones_done(*phones) == [0, 0]
            await watch.seen(lambda c: c.phase == cs.CALL_PHASE_ENDED, "the call's end on alpha")
        finally:
            await stop_phones(*phones)
            await watch.close()
        remotes = [c.remote_party.number for c in watch.calls if c.phase == cs.CALL_PHASE_ANSWERED]
        assert remotes[0] == CAROL[0] and remotes[-1] == DAVE[0]
        assert "phone told its party is now 201" in "".join(alpha.gateway.log)
