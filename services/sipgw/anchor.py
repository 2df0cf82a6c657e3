"""A call's media anchored on the server's media service: every phone sends its RTP to its own
server, and the servers' media services send to each other over the trunk call.

Each side of a call has one media leg for the call's whole life, whoever the party on that side
is: a transfer or a closed loop puts a new party on a side, and that party is simply given the
side's leg, so the party on the other side keeps sending where it did and the media service
reconnects the two itself. The one rule for SDP: whatever SDP one side sends is (a) told to the
media service as where that side's party is, and (b) rewritten for the other side so that it
points at the other side's own leg (``carry``).

A call whose legs could not be had (no media service) keeps direct media, as does every call when
the media service goes away mid-call (``go_direct``: each party is re-INVITEd with the other
party's own SDP).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Callable

from pbxmesh.media.v1 import media_pb2 as pb
from services.runtime.logs import call_log
from services.sipgw import sdp
from services.sipgw.call import Call, Side
from services.sipgw.media_link import MediaLeg, MediaLink

_log = logging.getLogger(__name__)

# The direction an answer takes toward a party that offered each direction (RFC 3264 6.1).
ANSWERING = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
DIRECTIONS = {
    "sendrecv": pb.DIRECTION_SENDRECV,
    "sendonly": pb.DIRECTION_SENDONLY,
    "recvonly": pb.DIRECTION_RECVONLY,
    "inactive": pb.DIRECTION_INACTIVE,
}


class NotAcceptable(Exception):
    """The SDP offers no codec the media service relays (PCMU, PCMA): 488."""


@dataclasses.dataclass
class Anchor:
    legs: dict[Side, MediaLeg]
    heard: dict[Side, bytes] = dataclasses.field(default_factory=dict)  # each side's own last SDP
    # Per side, the origin line it is shown: one session id, a version raised on every change.
    origins: dict[Side, list[int]] = dataclasses.field(default_factory=dict)
    shown: dict[Side, bytes] = dataclasses.field(default_factory=dict)  # the last SDP each side got
    # The sides behind the TLS trunk whose media is SRTP, and this server's key toward each side.
    secure: set[Side] = dataclasses.field(default_factory=set)
    keys: dict[Side, bytes] = dataclasses.field(default_factory=dict)


class Anchoring:
    """The gateway's side of the media plane; ``link`` is None when no media service is set."""

    def __init__(self, link: MediaLink | None, required: bool, srtp: bool = False):
        self.link = link
        self.required = required  # recording.required: no media service, no call
        # The trunk runs over TLS (tls configured): media toward the other servers is SRTP, keyed
        # in the SDP that only travels inside the trunk (SDES, RFC 4568).
        self.srtp = srtp
        self.unanchored = 0  # calls that went without (the metric)
        self.moved = 0  # calls moved to direct media when the media service went away

    def open(self, call: Call) -> bool:
        """Anchors a new call; False when it must be refused (recording required, no media)."""
        if self.link is None:
            return True
        pair = self.link.take_pair()
        if pair is None:
            self.unanchored += 1
            _log.warning(
                "call %s: no media service legs ready (%s)%s",
                call.id,
                "attached" if self.link.attached else "media service unreachable",
                "; refused: recording.required" if self.required else "; direct media, not recorded",
            )
            return not self.required
        call.media = Anchor({Side.CALLER: pair[0], Side.CALLEE: pair[1]})
        self.connect(call)
        return True

    def protect(self, call: Call, side: Side) -> None:
        """``side`` is behind the TLS trunk: what it is shown offers SRTP."""
        if call.media is not None and self.srtp:
            call.media.secure.add(side)

    def connect(self, call: Call) -> None:
        """Tells the media service which leg is this server's party (channel 1 of recordings)."""
        anchor = call.media
        if anchor is None or self.link is None:
            return
        home, other = anchor.legs[call.home], anchor.legs[call.home.other]
        join = pb.Connect(call_id=call.id, home_leg_id=home.leg_id, other_leg_id=other.leg_id)
        self.link.send(pb.AttachRequest(connect=join))

    def offer(self, call: Call, source: Side, body: bytes, refuse: bool = True) -> bytes:
        """An SDP offer from ``source`` on its way to the other side. Raises NotAcceptable when it
        offers nothing the media service relays (unless ``refuse`` is off: a party taking a
        side's place, whose offer cannot be refused any more)."""
        if call.media is None or not body:
            return body
        try:
            self.heard(call, source, body)
        except NotAcceptable:
            if refuse:
                raise
            call_log(_log, call.id).warning("the %s offered no PCMU or PCMA", source)
        # The media service sends to a held party whatever the holder said (the music): a hold
        # reaches the held party as sendonly, never inactive, or it would stop playing.
        stream = sdp.audio_stream(body)
        direction = stream.direction if stream is not None else "sendrecv"
        return self.shown(call, source.other, body, "sendonly" if direction == "inactive" else direction)

    def answer(self, call: Call, source: Side, body: bytes, tell: bool = True) -> bytes:
        """An SDP answer from ``source`` on its way to the side whose offer it answers: its
        direction is the one that answers that side's own offer (the media service can take
        and send whatever that side wants). ``tell`` off: ``body`` is what the media service
        knows of ``source`` already (the gateway answers for it)."""
        if call.media is None or not body:
            return body
        try:
            if tell:
                self.heard(call, source, body)
        except NotAcceptable:
            call_log(_log, call.id).warning("the %s answered without PCMU or PCMA", source)
        offered = call.media.heard.get(source.other)
        stream = sdp.audio_stream(offered) if offered else None
        direction = ANSWERING.get(stream.direction, "sendrecv") if stream is not None else None
        return self.shown(call, source.other, body, direction)

    def heard_answer(self, call: Call, side: Side, body: bytes) -> None:
        """``heard`` that never refuses (a party taking a side's place through a hand-over)."""
        try:
            self.heard(call, side, body)
        except NotAcceptable:
            call_log(_log, call.id).warning("the %s sent no PCMU or PCMA", side)

    def heard(self, call: Call, side: Side, body: bytes) -> None:
        """``side``'s party sent this SDP: the media service sends to it and takes only from it."""
        anchor = call.media
        stream = sdp.audio_stream(body) if body else None
        if anchor is None or stream is None or self.link is None:
            return
        if not stream.speaks_g711:
            raise NotAcceptable("no PCMU or PCMA offered")
        anchor.heard[side] = body
        leg = call.legs.get(side)
        if stream.srtp_key is not None and leg is not None and leg.link.name == "TLS":
            # The key came over TLS: another server's media service (the trunk), or a phone on SIP
            # over TLS that offered SRTP. A key sent in clear text protects nothing: plain then.
            anchor.secure.add(side)
        elif stream.srtp_key is None:
            anchor.secure.discard(side)  # it answered plain RTP: plain both ways
        if not stream.reachable:
            return  # nothing to send to (held with 0.0.0.0, a name, IPv6): the media service keeps what it had
        keys = (self._key(anchor, side), stream.srtp_key) if side in anchor.secure and stream.srtp_key else (b"", b"")
        remote = pb.SetRemote(
            leg_id=anchor.legs[side].leg_id,
            address=stream.address,
            rtp_port=stream.port,
            rtcp_port=stream.rtcp_port,
            codecs=[pb.Codec(payload_type=pt, encoding=name, clock_rate=rate) for pt, name, rate in stream.codecs],
            direction=DIRECTIONS.get(stream.direction, pb.DIRECTION_SENDRECV),
            srtp_send_key=keys[0],
            srtp_recv_key=keys[1],
        )
        self.link.send(pb.AttachRequest(set_remote=remote))

    @staticmethod
    def _key(anchor: Anchor, side: Side) -> bytes:
        """This server's SRTP master key and salt toward ``side`` (one for the call's life)."""
        return anchor.keys.setdefault(side, os.urandom(30))

    def shown(self, call: Call, side: Side, body: bytes, direction: str | None = None) -> bytes:
        """``body`` rewritten for ``side``'s party: it points at that side's own media leg."""
        anchor = call.media
        if anchor is None or not body:
            return body
        leg = anchor.legs[side]
        origin = anchor.origins.setdefault(side, [random.randrange(1, 2**31), 1])
        key = self._key(anchor, side) if side in anchor.secure else None
        out = sdp.anchored(body, leg.address, leg.rtp_port, (origin[0], origin[1]), direction, key)
        if side in anchor.shown and anchor.shown[side] != out:
            origin[1] += 1  # RFC 3264 8: a changed SDP carries a higher version
            out = sdp.anchored(body, leg.address, leg.rtp_port, (origin[0], origin[1]), direction, key)
        anchor.shown[side] = out
        return out

    def hold(self, call: Call, by: Side, holding: bool) -> None:
        """A party of this server put the other side on hold (or resumed): the other side hears
        the music meanwhile. A hold from behind the trunk is the other server's to play."""
        anchor = call.media
        leg = call.legs.get(by)
        if anchor is None or self.link is None or leg is None or leg.trunk:
            return
        held = anchor.legs[by.other].leg_id
        if holding:
            self.link.send(pb.AttachRequest(play=pb.Play(leg_id=held, file="", loop=True)))
        else:
            self.link.send(pb.AttachRequest(stop_play=pb.StopPlay(leg_id=held)))

    def close(self, call: Call) -> None:
        anchor, call.media = call.media, None
        if anchor is not None and self.link is not None:
            leg_ids = [leg.leg_id for leg in anchor.legs.values()]
            self.link.send(pb.AttachRequest(close_legs=pb.CloseLegs(leg_ids=leg_ids)))

    def go_direct(self, calls: list[Call], reinvite: Callable[[Call, Side, bytes], None]) -> None:
        """The media service is gone: each party of each anchored call is sent the other party's
        own SDP, so that the two talk directly again."""
        for call in calls:
            anchor = call.media
            if anchor is None:
                continue
            call.media = None
            self.moved += 1
            for side in (Side.CALLER, Side.CALLEE):
                own = anchor.heard.get(side.other)
                if own and side in call.legs:
                    origin = anchor.origins.setdefault(side, [random.randrange(1, 2**31), 1])
                    origin[1] += 1
                    stream = sdp.audio_stream(own)
                    address = stream.address if stream is not None else "0.0.0.0"
                    port = stream.port if stream is not None else 0
                    reinvite(call, side, sdp.anchored(own, address, port, (origin[0], origin[1])))
            _log.warning("call %s: the media service is gone; the parties are moved to direct media", call.id)
