"""Anchored media in the gateway, one layer alone: what a party's SDP tells the media service, the
SDP the other party gets, and the commands sent (a fake link records them)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pbxmesh.media.v1 import media_pb2 as pb
from services.sipgw import sdp
from services.sipgw.anchor import Anchoring, NotAcceptable
from services.sipgw.call import Call, Leg, Side
from services.sipgw.media_link import MediaLeg, MediaLink

OFFER = (
    b"v=0\r\no=alice 7 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 9 0 8 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:101 TELEPHONE-EVENT/8000\r\n"
    b"a=fmtp:101 0-16\r\na=rtcp:4005\r\na=candidate:1 1 UDP 1 10.0.0.5 4000 typ host\r\n"
    b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:xyz\r\na=sendrecv\r\nm=video 5000 RTP/AVP 96\r\n"
)
ANSWER = b"v=0\r\no=bob 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"


class FakeLink(MediaLink):
    def __init__(self) -> None:
        super().__init__("127.0.0.1:1")
        self.sent: list[pb.AttachRequest] = []
        self.stock = [(MediaLeg("w0-1", "127.0.0.1", 40000, 40001), MediaLeg("w0-2", "127.0.0.1", 40002, 40003))]

    def send(self, request: pb.AttachRequest) -> None:
        self.sent.append(request)

    def _refill(self) -> None:
        return None

    def commands(self, kind: str) -> list[pb.AttachRequest]:
        return [r for r in self.sent if r.WhichOneof("command") == kind]


def anchored_call() -> tuple[Anchoring, FakeLink, Call]:
    link = FakeLink()
    media = Anchoring(link, required=False)
    caller = Leg("100", "Alice", None, ("10.0.0.5", 5060))  # type: ignore[arg-type]
    call = Call("c1", {Side.CALLER: caller}, "101")
    assert media.open(call)
    return media, link, call


def test_a_partys_stream_as_its_sdp_describes_it() -> None:
    stream = sdp.audio_stream(OFFER)
    assert stream is not None
    assert (stream.address, stream.port, stream.rtcp_port, stream.direction) == ("10.0.0.5", 4000, 4005, "sendrecv")
    assert stream.codecs == ((0, "PCMU", 8000), (8, "PCMA", 8000), (101, "telephone-event", 8000))
    assert stream.reachable and stream.speaks_g711


def test_what_no_media_can_be_sent_to() -> None:
    for address in (b"0.0.0.0", b"pbx.example.com", b"::1"):
        stream = sdp.audio_stream(ANSWER.replace(b"10.0.0.9", address))
        assert stream is not None and not stream.reachable, address
    assert sdp.audio_stream(b"not sdp") is None
    assert sdp.audio_stream(b"v=0\r\nm=audio x RTP/AVP 0\r\n") is None
    assert sdp.audio_stream(b"v=0\r\nm=video 5000 RTP/AVP 96\r\n") is None


def test_the_other_party_gets_the_media_services_address_and_only_what_is_relayed() -> None:
    out = sdp.anchored(OFFER, "192.0.2.1", 40002, (55, 3), "sendonly").decode()
    lines = out.split("\r\n")
    assert "o=- 55 3 IN IP4 192.0.2.1" in lines
    assert "c=IN IP4 192.0.2.1" in lines and "10.0.0.5" not in out
    assert "m=audio 40002 RTP/AVP 0 8 101" in lines and "m=video 0 RTP/AVP 96" in lines
    assert "a=fmtp:101 0-16" in lines and "G722" not in out
    for left_out in ("a=rtcp:", "a=candidate", "a=crypto", "a=sendrecv"):
        assert left_out not in out, left_out
    assert lines.count("a=sendonly") == 1


def test_a_providers_codecs_limit_the_audio_stream_and_nothing_else() -> None:
    limited = sdp.only_codecs(OFFER, ("PCMA",))
    assert limited is not None
    lines = limited.decode().split("\r\n")
    assert "m=audio 4000 RTP/AVP 8 101" in lines  # G722 and PCMU gone, telephone-event kept
    assert "a=fmtp:101 0-16" in lines and "G722" not in limited.decode()
    assert "m=video 5000 RTP/AVP 96" in lines and "c=IN IP4 10.0.0.5" in lines
    assert sdp.only_codecs(OFFER, ("PCMU", "PCMA")) is not None
    only_g722 = b"v=0\r\nc=IN IP4 10.0.0.5\r\nm=audio 4000 RTP/AVP 9 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    assert sdp.only_codecs(only_g722, ("PCMU", "PCMA")) is None  # telephone-event alone is no call
    assert sdp.only_codecs(b"not sdp", ("PCMA",)) == b"not sdp"
    assert sdp.limit_offer(OFFER, "application/sdp", ()) == OFFER  # a route with no provider's codecs
    assert sdp.limit_offer(OFFER, "text/plain", ("PCMA",)) == OFFER


def test_an_offer_is_told_to_the_media_service_and_rewritten_for_the_other_side() -> None:
    media, link, call = anchored_call()
    (connect,) = link.commands("connect")
    assert (connect.connect.call_id, connect.connect.home_leg_id, connect.connect.other_leg_id) == (
        "c1",
        "w0-1",
        "w0-2",
    )
    shown = media.offer(call, Side.CALLER, OFFER)
    (remote,) = link.commands("set_remote")
    assert (remote.set_remote.leg_id, remote.set_remote.address, remote.set_remote.rtp_port) == (
        "w0-1",
        "10.0.0.5",
        4000,
    )
    assert [c.encoding for c in remote.set_remote.codecs] == ["PCMU", "PCMA", "telephone-event"]
    assert b"m=audio 40002 " in shown  # the callee sends to its own side's leg
    answer = media.answer(call, Side.CALLEE, ANSWER)
    assert b"m=audio 40000 " in answer and b"a=sendrecv" in answer
    assert link.commands("set_remote")[-1].set_remote.leg_id == "w0-2"


def test_a_hold_reaches_the_held_party_as_sendonly_and_the_answer_answers_the_offer() -> None:
    media, link, call = anchored_call()
    call.legs[Side.CALLER] = Leg("100", "", None, ("10.0.0.5", 5060))  # type: ignore[arg-type]
    media.offer(call, Side.CALLER, OFFER)
    media.answer(call, Side.CALLEE, ANSWER)
    held = media.offer(call, Side.CALLER, OFFER.replace(b"a=sendrecv", b"a=inactive"))
    assert b"a=sendonly" in held and b"a=inactive" not in held
    answer = media.answer(call, Side.CALLEE, ANSWER + b"a=recvonly\r\n")
    assert b"a=inactive" in answer  # what answers an inactive offer
    media.hold(call, Side.CALLER, True)
    (play,) = link.commands("play")
    assert play.play.leg_id == "w0-2" and play.play.loop  # the music goes to the held side


def test_the_origin_version_rises_only_when_the_sdp_changes() -> None:
    media, _, call = anchored_call()
    first = media.offer(call, Side.CALLER, OFFER)
    again = media.offer(call, Side.CALLER, OFFER)
    changed = media.offer(call, Side.CALLER, OFFER.replace(b"RTP/AVP 9 0 8 101", b"RTP/AVP 8"))
    versions = [int(body.split(b"\r\n")[1].split()[2]) for body in (first, again, changed)]
    assert versions[0] == versions[1] < versions[2]


def test_an_offer_without_g711_is_not_acceptable_and_a_name_is_not_sent_to() -> None:
    media, link, call = anchored_call()
    try:
        media.offer(call, Side.CALLER, OFFER.replace(b"RTP/AVP 9 0 8 101", b"RTP/AVP 9"))
    except NotAcceptable:
        pass
    else:
        raise AssertionError("an offer of G.722 alone was taken")
    media.offer(call, Side.CALLER, OFFER.replace(b"10.0.0.5", b"phone.example.com"))
    assert link.commands("set_remote") == []  # never resolved, never sent to


def test_a_call_without_legs_ready_goes_direct_or_is_refused() -> None:
    link = FakeLink()
    link.stock = []
    call = Call("c2", {}, "101")
    assert Anchoring(link, required=False).open(call) and call.media is None
    assert not Anchoring(link, required=True).open(Call("c3", {}, "101"))


def test_when_the_media_service_goes_each_party_gets_the_other_partys_own_sdp() -> None:
    media, _, call = anchored_call()
    call.legs[Side.CALLEE] = Leg("101", "", None, ("10.0.0.9", 5060))  # type: ignore[arg-type]
    media.offer(call, Side.CALLER, OFFER)
    media.answer(call, Side.CALLEE, ANSWER)
    sent: dict[Side, bytes] = {}
    media.go_direct([call], lambda c, side, body: sent.__setitem__(side, body))
    assert call.media is None and media.moved == 1
    assert b"c=IN IP4 10.0.0.9" in sent[Side.CALLER] and b"m=audio 6000 " in sent[Side.CALLER]
    assert b"c=IN IP4 10.0.0.5" in sent[Side.CALLEE] and b"m=audio 4000 " in sent[Side.CALLEE]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_body_is_read_and_rewritten_without_an_error(body: bytes) -> None:
    for candidate in (body, b"v=0\r\n" + body, b"v=0\r\nm=audio " + body):
        stream = sdp.audio_stream(candidate)
        if stream is not None:
            assert 0 <= stream.port <= 65535
        sdp.anchored(candidate, "127.0.0.1", 40000, (1, 1), "sendrecv")
