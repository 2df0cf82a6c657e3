"""Phones on SIP over TLS (listen.sips, the server's certificate): a baresip phone over TLS calls
one over UDP and each hears the other's tone; with sip.require_tls a phone over UDP is refused."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from tests.harness.baresip import Baresip, samples
from tests.harness.servers import Group
from tests.harness.site import Spec, running_sites
from tests.integration.test_media import connect, legs, level
from tests.integration.test_sipgw import _invite

ALICE, BOB = ("100", "alice-pw-100"), ("101", "bob-pw-101")
ALICE_TONE, BOB_TONE = 440, 1000


async def test_a_phone_over_tls_calls_a_phone_over_udp(group: Group, tmp_path: Path) -> None:
    async with running_sites(group, {"alpha": Spec(ALICE, "sales", (BOB,), tls=True)}) as made:
        gateway = made["alpha"].gateway
        ca = made["alpha"].registry.config_path.parent / "pki" / "ca.pem"
        alice = await Baresip(tmp_path / "alice", *ALICE, gateway.sips, ALICE_TONE, tls_ca=ca).start()
        bob = await Baresip(tmp_path / "bob", *BOB, gateway.sip, BOB_TONE).start()
        try:
            await connect(alice, bob, BOB[0])
            await alice.command("hangup")
        finally:
            for phone in (alice, bob):
                await phone.stop()
        assert level(samples(alice.heard()[-1]), BOB_TONE) > 0.2
        assert level(samples(bob.heard()[-1]), ALICE_TONE) > 0.2
        assert any("SIP over TLS on" in line for line in gateway.log)


async def test_with_require_tls_a_phone_over_udp_is_refused(group: Group, tmp_path: Path) -> None:
    spec = Spec(ALICE, "sales", (BOB,), tls=True, require_tls=True)
    async with running_sites(group, {"alpha": spec}) as made:
        gateway = made["alpha"].gateway
        ca = made["alpha"].registry.config_path.parent / "pki" / "ca.pem"
        host, port = gateway.sip.split(":")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(3)
            sock.sendto(_invite(BOB[0], "udp1"), (host, int(port)))
            answer = await asyncio.to_thread(sock.recv, 65536)
        assert answer.startswith(b"SIP/2.0 403"), answer[:80]
        alice = await Baresip(tmp_path / "alice", *ALICE, gateway.sips, ALICE_TONE, tls_ca=ca).start()
        await alice.stop()  # registered over TLS: the way in that is left


async def test_a_phone_over_tls_that_wants_srtp_gets_it_from_its_media_service(group: Group, tmp_path: Path) -> None:
    """Alice (SIP over TLS, SRTP only) calls Bob (UDP, plain RTP) through the anchored server:
    the media service decrypts Alice's audio for Bob and encrypts Bob's for her."""
    async with running_sites(group, {"alpha": Spec(ALICE, "sales", (BOB,), tls=True, media=True)}) as made:
        site = made["alpha"]
        ca = site.registry.config_path.parent / "pki" / "ca.pem"
        alice = await Baresip(tmp_path / "alice", *ALICE, site.gateway.sips, ALICE_TONE, tls_ca=ca, srtp=True).start()
        bob = await Baresip(tmp_path / "bob", *BOB, site.gateway.sip, BOB_TONE).start()
        try:
            await connect(alice, bob, BOB[0])
            found = await legs(site.media)
            await alice.command("hangup")
        finally:
            for phone in (alice, bob):
                await phone.stop()
        assert level(samples(alice.heard()[-1]), BOB_TONE) > 0.2
        assert level(samples(bob.heard()[-1]), ALICE_TONE) > 0.2
        busy = [leg for leg in found if leg.packets_in > 20]
        assert sorted(leg.srtp for leg in busy) == [False, True], found
