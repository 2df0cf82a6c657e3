"""SRTP between two servers' media services, keyed inside the TLS trunk: a cross-server call
between two baresip phones (each with its own tone) through two anchored servers with ``tls``.
Each phone hears the other (so both directions decrypt), both trunk-side legs say SRTP, and a
capture of the loopback while they talk finds the RTP between the two media services encrypted
(each packet 10 bytes longer, for its tag, and its payload not the tone) while the phones' own
legs stay plain RTP."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from services.media import g711
from services.runtime.config import load_config
from tests.harness.baresip import samples
from tests.harness.servers import Group
from tests.harness.site import Site, Spec, logs_of, running_sites
from tests.integration.test_callstate import ALICE, CAROL
from tests.integration.test_media import ALICE_TONE, CAROL_TONE, connect, legs, level, start_phones


@pytest.fixture
async def sites(group: Group) -> AsyncIterator[dict[str, Site]]:
    specs = {
        "alpha": Spec(ALICE, "sales", media=True, tls=True),
        "beta": Spec(CAROL, "support", media=True, tls=True),
    }
    async with running_sites(group, specs, {"alpha": {"200"}, "beta": {"100"}}) as made:
        yield made


def rtp_range(site: Site) -> range:
    first, last = load_config(site.registry.config_path).media.rtp_ports.split("-")
    return range(int(first), int(last) + 1)


def capture(seconds: float) -> list[tuple[int, int, bytes]]:
    """UDP datagrams on the loopback for ``seconds``: (source port, destination port, payload)."""
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0800))
    sniffer.bind(("lo", 0))
    sniffer.settimeout(0.2)
    seen: list[tuple[int, int, bytes]] = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            try:
                frame = sniffer.recv(65536)
            except TimeoutError:
                continue
            ip = frame[14:]
            if len(ip) < 28 or ip[9] != 17:  # not UDP
                continue
            start = (ip[0] & 0x0F) * 4
            source, destination, length = struct.unpack("!HHH", ip[start : start + 6])
            seen.append((source, destination, ip[start + 8 : start + length]))
    finally:
        sniffer.close()
    return seen


def entropy(data: bytes) -> float:
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    p = counts[counts > 0] / len(data)
    return float(-(p * np.log2(p)).sum())


async def test_the_media_between_two_servers_is_srtp(sites: dict[str, Site], tmp_path: Path) -> None:
    alpha, beta = sites["alpha"], sites["beta"]
    alice, carol = await start_phones(tmp_path, (ALICE, alpha, ALICE_TONE), (CAROL, beta, CAROL_TONE))
    try:
        await connect(alice, carol, CAROL[0])
        captured = await asyncio.to_thread(capture, 1.5)
        states = {name: await legs(site.media) for name, site in sites.items()}
        await alice.command("hangup")
        await carol.event("CALL_CLOSED")
    except BaseException:
        print("alice:", alice.log(), "carol:", carol.log(), logs_of(alpha, beta), sep="\n")
        raise
    finally:
        for phone in (alice, carol):
            await phone.stop()
    assert level(samples(alice.heard()[-1]), CAROL_TONE) > 0.2
    assert level(samples(carol.heard()[-1]), ALICE_TONE) > 0.2
    for name, found in states.items():
        busy = [leg for leg in found if leg.packets_in > 20]
        assert sorted(leg.srtp for leg in busy) == [False, True], (name, found)  # the phone's plain, the trunk's SRTP
    media = set(rtp_range(alpha)) | set(rtp_range(beta))
    between = [p for s, d, p in captured if s in media and d in media and s % 2 == 0]
    to_phones = [p for s, d, p in captured if (s in media) != (d in media) and s % 2 == 0 and d % 2 == 0]
    assert len(between) > 50 and len(to_phones) > 50
    assert all(len(p) == 12 + 160 + 10 for p in between), {len(p) for p in between}
    assert all(len(p) == 12 + 160 for p in to_phones), {len(p) for p in to_phones}
    # A phone's audio is a tone: PCMU with few distinct bytes; what crosses between servers is not.
    sealed, plain = b"".join(p[12:172] for p in between), b"".join(p[12:] for p in to_phones)
    assert entropy(sealed) > 7.5 > entropy(plain) + 1.0, (entropy(sealed), entropy(plain))
    decoded = g711.decode(g711.PCMU, sealed)
    assert max(level(decoded, hz) for hz in (ALICE_TONE, CAROL_TONE)) < 0.05
