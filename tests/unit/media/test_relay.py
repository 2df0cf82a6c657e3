"""The C data path (``_relay``) on its own: real loopback sockets, no event loop, no worker."""

from __future__ import annotations

import itertools
import select
import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.media import _relay, g711, rtp
from services.media.legs import Leg, bind_pair
from services.runtime.embedded_etcd import free_port

PCMU_AND_EVENTS = [(0, "PCMU", 8000), (101, "telephone-event", 8000)]
PCMA_ONLY = [(8, "PCMA", 8000)]


class Party:
    """A phone's socket: sends to its leg, reads what the leg sent."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(1.0)
        self.port = self.sock.getsockname()[1]

    def send(self, leg: Leg, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", leg.port))

    def packets(self, count: int) -> list[rtp.Packet]:
        got = [rtp.parse(self.sock.recv(2048)) for _ in range(count)]
        assert all(packet is not None for packet in got)
        return [packet for packet in got if packet is not None]

    def nothing_waits(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(2048)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(1.0)
        return False


def new_leg(name: str, party: Party, codecs: list[tuple[int, str, int]], port: int) -> Leg:
    rtp_sock, rtcp_sock = bind_pair("127.0.0.1", port)
    leg = Leg(name, "127.0.0.1", port, "test", rtp_sock, rtcp_sock)
    leg.set_remote("127.0.0.1", party.port, party.port + 1, codecs, "sendrecv")
    return leg


@pytest.fixture
def call() -> Iterator[tuple[Party, Leg, Party, Leg]]:
    alice, bob = Party(), Party()
    a = new_leg("a", alice, PCMU_AND_EVENTS, free_port(2))
    b = new_leg("b", bob, PCMU_AND_EVENTS, free_port(2))
    a.connect(b, "call", home=True)
    b.connect(a, "call", home=False)
    yield alice, a, bob, b
    for leg in (a, b):
        leg.close()
    for party in (alice, bob):
        party.sock.close()


def wait_readable(leg: Leg) -> None:
    assert leg.rtp is not None
    select.select([leg.rtp], [], [], 1.0)


def test_csrcs_extension_and_padding_are_dropped_and_the_payload_relayed(call: tuple[Party, Leg, Party, Leg]) -> None:
    alice, a, bob, b = call
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 1, 0x80 | 0, 7, 1600, 42)
    alice.send(a, header + b"CSRC" + b"\xbe\xde\x00\x01" + b"EXT!" + b"audio" + b"\x00\x00\x03")
    wait_readable(a)
    a.fast.read_rtp()
    (packet,) = bob.packets(1)
    assert packet.payload == b"audio" and packet.payload_type == 0 and packet.marker
    assert packet.ssrc == b.fast.ssrc


def test_a_burst_longer_than_one_wake_up_is_relayed_in_order(call: tuple[Party, Leg, Party, Leg]) -> None:
    alice, a, bob, b = call
    # More than one wake-up takes (16 datagrams a batch, 8 batches), few enough for the sockets'
    # default receive buffers.
    for sequence in range(150):
        alice.send(a, rtp.build(0, False, sequence, sequence * 160, 9, sequence.to_bytes(2, "big")))
    wake_ups = 0
    while a.fast.packets_in < 150 and wake_ups < 100:
        wait_readable(a)
        a.fast.read_rtp()  # a few batches per call at most: the other legs get their turn
        wake_ups += 1
    assert wake_ups > 1
    relayed = bob.packets(150)
    assert [int.from_bytes(p.payload, "big") for p in relayed] == list(range(150))
    assert all((q.sequence - p.sequence) % 65536 == 1 for p, q in itertools.pairwise(relayed))
    assert a.fast.packets_in == 150 and b.fast.packets_out == 150


def test_a_source_switch_continues_the_sequence_and_moves_time_forward(call: tuple[Party, Leg, Party, Leg]) -> None:
    _alice, _a, bob, b = call
    b.fast.connect(None)
    first_source, second_source = object(), object()
    assert b.fast.send(first_source, 7, _relay.PCMU, 0, 100, 5000, b"x") is not None
    assert b.fast.send(first_source, 7, _relay.PCMU, 0, 101, 5160, b"x") is not None
    assert b.fast.send(second_source, 7, _relay.PCMU, 0, 9, 123456789, b"x") is not None
    # The same source with a new SSRC (its phone restarted the stream) is a switch too.
    assert b.fast.send(second_source, 8, _relay.PCMU, 0, 500, 42, b"x") is not None
    first, second, switched, restarted = bob.packets(4)
    assert first.marker and not second.marker
    assert second.sequence == (first.sequence + 1) & 0xFFFF and second.timestamp == (first.timestamp + 160) % 2**32
    assert switched.marker and switched.ssrc == first.ssrc
    assert switched.sequence == (second.sequence + 1) & 0xFFFF
    assert 0 < (switched.timestamp - second.timestamp) % 2**32 < 8000
    assert restarted.marker and restarted.sequence == (switched.sequence + 1) & 0xFFFF


def test_a_resumed_stream_goes_on_where_it_stopped(call: tuple[Party, Leg, Party, Leg]) -> None:
    _alice, _a, bob, b = call
    b.fast.send(object(), 1, _relay.PCMU, 0, 1, 160, b"x")
    state = b.fast.stream_state()
    (before,) = bob.packets(1)
    b.fast.resume_stream(int(state["ssrc"]), int(state["sequence"]), int(state["timestamp"]), state["sent"], True)
    b.fast.send(object(), 1, _relay.PCMU, 0, 5000, 99, b"x")
    (after,) = bob.packets(1)
    assert after.ssrc == before.ssrc and after.marker and after.sequence == (before.sequence + 1) & 0xFFFF


def test_transcoding_and_what_is_kept_for_the_recording(call: tuple[Party, Leg, Party, Leg]) -> None:
    alice, a, bob, b = call
    b.set_remote("127.0.0.1", bob.port, bob.port + 1, PCMA_ONLY, "sendrecv")
    b.fast.take_taps()
    payload = bytes(range(160))
    alice.send(a, rtp.build(0, False, 1, 160, 5, payload))
    wait_readable(a)
    a.fast.read_rtp()
    (packet,) = bob.packets(1)
    assert packet.payload_type == 8 and packet.payload == payload.translate(g711.TRANSCODE[(g711.PCMU, g711.PCMA)])
    ((arrival, encoding, kept),) = b.fast.take_taps()
    assert encoding == _relay.PCMA and kept == packet.payload and arrival > 0
    assert b.fast.take_taps() == []


def test_a_key_is_reported_once_and_not_relayed_to_a_party_without_events(call: tuple[Party, Leg, Party, Leg]) -> None:
    alice, a, bob, b = call
    b.set_remote("127.0.0.1", bob.port, bob.port + 1, PCMA_ONLY, "sendrecv")
    keys: list[tuple[str, str, int]] = []
    _relay.set_digit_handler(lambda leg_id, key, ms: keys.append((leg_id, key, ms)))
    try:
        for _ in range(3):  # the end packet, three times (RFC 4733 section 2.5.1.4)
            alice.send(a, rtp.build(101, False, 3, 8000, 5, bytes([11, 0x80 | 10, 0x03, 0x20])))
        for _ in range(3):
            wait_readable(a)
            a.fast.read_rtp()
    finally:
        _relay.set_digit_handler(None)
    assert keys == [("a", "#", 100)]
    assert bob.nothing_waits()


def test_packets_from_anywhere_else_are_dropped_and_counted(call: tuple[Party, Leg, Party, Leg]) -> None:
    _alice, a, bob, _b = call
    stranger = Party()
    before = _relay.counters()["packets_dropped"]
    stranger.send(a, rtp.build(0, False, 1, 160, 5, b"injected"))
    wait_readable(a)
    a.fast.read_rtp()
    assert bob.nothing_waits()
    assert a.fast.packets_dropped == 1 and a.fast.packets_in == 0
    assert _relay.counters()["packets_dropped"] == before + 1
    stranger.sock.close()


def test_a_remote_that_is_not_an_address_is_refused() -> None:
    party = Party()
    leg = new_leg("x", party, PCMU_AND_EVENTS, free_port(2))
    with pytest.raises(ValueError, match="not an address"):
        leg.set_remote("phone.example.com", 4000, 4001, PCMU_AND_EVENTS, "sendrecv")
    with pytest.raises(ValueError, match="out of range"):
        leg.fast.set_remote("127.0.0.1", 4000, 4001, {200: 0}, {}, True, True)
    leg.close()
    party.sock.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(datagrams=st.lists(st.binary(max_size=300), min_size=1, max_size=8))
def test_any_datagram_from_the_party_is_relayed_as_rtp_or_dropped(
    call: tuple[Party, Leg, Party, Leg], datagrams: list[bytes]
) -> None:
    alice, a, bob, _b = call
    for data in datagrams:
        alice.send(a, data)
    assert a.rtp is not None
    while select.select([a.rtp], [], [], 0)[0]:  # loopback delivers within sendto
        a.fast.read_rtp()
    bob.sock.setblocking(False)
    try:
        while True:
            out = bob.sock.recv(2048)
            packet = rtp.parse(out)
            assert packet is not None and out[0] == 0x80 and packet.payload_type in (0, 101)
    except BlockingIOError:
        pass
    finally:
        bob.sock.settimeout(1.0)


def test_srtp_between_two_legs_encrypts_on_the_wire_and_refuses_tampering_and_replay() -> None:
    """alice -> a -> b ==SRTP==> c -> d -> bob, as between two servers' media services; the wire
    between b and c is a socket of the test, which reads what passes and sends it on."""
    alice, wire, bob = Party(), Party(), Party()
    a = new_leg("a", alice, PCMU_AND_EVENTS, free_port(2))
    b = new_leg("b", wire, PCMU_AND_EVENTS, free_port(2))
    c = new_leg("c", wire, PCMU_AND_EVENTS, free_port(2))
    d = new_leg("d", bob, PCMU_AND_EVENTS, free_port(2))
    b_key, c_key = bytes(range(30)), bytes(range(100, 130))
    b.fast.set_srtp(b_key, c_key)
    c.fast.set_srtp(c_key, b_key)
    assert b.fast.srtp and c.fast.srtp and not a.fast.srtp
    for near, far, call in ((a, b, "one"), (c, d, "two")):
        near.connect(far, call, home=True)
        far.connect(near, call, home=False)
    try:
        payload = bytes(range(160))
        alice.send(a, rtp.build(0, False, 7, 1120, 42, payload))
        wait_readable(a)
        a.fast.read_rtp()
        sealed = wire.sock.recv(2048)
        assert len(sealed) == 12 + 160 + 10 and payload not in sealed  # encrypted, with its 80-bit tag
        wire.send(c, sealed)
        wait_readable(c)
        c.fast.read_rtp()
        (heard,) = bob.packets(1)
        assert heard.payload == payload and heard.payload_type == 0
        before = c.fast.packets_dropped
        wire.send(c, sealed)  # the same packet again: a replay
        tampered = bytearray(sealed)
        tampered[20] ^= 1
        wire.send(c, bytes(tampered))
        for _ in range(2):
            wait_readable(c)
            c.fast.read_rtp()
        assert c.fast.packets_dropped == before + 2 and bob.nothing_waits()
        with pytest.raises(ValueError, match="30 bytes"):
            c.fast.set_srtp(b"short", c_key)
        c.fast.set_srtp(b"", b"")  # back to plain
        assert not c.fast.srtp
    finally:
        for leg in (a, b, c, d):
            leg.close()
        for party in (alice, wire, bob):
            party.sock.close()
