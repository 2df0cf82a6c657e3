"""The media service's gRPC API: the gateway's control stream, the legs, the recordings."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp

from pbxmesh.media.v1 import media_pb2 as pb
from pbxmesh.media.v1 import media_pb2_grpc as pb_grpc
from services.media.plane import Digit, Event, LegFreed, NoPortFree, Plane, PlayFinished
from services.media.recordings import CALL_ID_RE, Catalog, Entry
from services.runtime.errors import InvalidArgument, NotFound
from services.runtime.subscription import Subscription, answer_while
from services.runtime.text import MAX_ID, problem

_log = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext
MAX_LEGS_PER_REQUEST = 64
MAX_CODECS = 16
SRTP_KEY = 30  # AES_CM_128_HMAC_SHA1_80: master key (16) and salt (14)
DEFAULT_LIST_LIMIT = 1000
CHUNK = 64 * 1024
ASSETS = Path(__file__).parent / "assets"  # the sound files shipped with the product
DIRECTIONS = {
    pb.DIRECTION_SENDRECV: "sendrecv",
    pb.DIRECTION_SENDONLY: "sendonly",
    pb.DIRECTION_RECVONLY: "recvonly",
    pb.DIRECTION_INACTIVE: "inactive",
}
ENCODINGS = ("PCMU", "PCMA", "telephone-event")


class MediaService(pb_grpc.MediaServiceServicer):
    def __init__(self, plane: Plane, catalog: Catalog, music_on_hold: Path | None = None):
        self.plane = plane
        self.catalog = catalog
        self.music_on_hold = music_on_hold
        self.instance = uuid.uuid4().hex
        self.owners: dict[str, Subscription[pb.AttachResponse]] = {}  # the attached gateways' streams
        self.owner_of: dict[str, str] = {}  # leg id -> owner
        self.calls: dict[str, tuple[str, str]] = {}  # call id -> its connected legs (home, other)

    def register(self, server: grpc.aio.Server) -> Iterable[str]:
        pb_grpc.add_MediaServiceServicer_to_server(self, server)
        return [pb.DESCRIPTOR.services_by_name["MediaService"].full_name]

    # -- the gateway's control stream ---------------------------------------------------------

    async def Attach(
        self, request_iterator: AsyncIterator[pb.AttachRequest], context: Ctx[pb.AttachRequest, pb.AttachResponse]
    ) -> AsyncIterator[pb.AttachResponse]:
        owner = uuid.uuid4().hex
        out: Subscription[pb.AttachResponse] = Subscription()
        self.owners[owner] = out
        out.put(pb.AttachResponse(attached=pb.Attached(instance=self.instance)))
        _log.info("a gateway attached (%s)", context.peer())

        async def read() -> None:
            async for request in request_iterator:
                try:
                    await self._command(owner, request, out)
                except InvalidArgument as exc:
                    # One bad command (a party's odd SDP) must not cut the stream every call uses.
                    _log.warning("a gateway's command refused: %s", exc.message)

        try:
            async for response in answer_while(read(), out):
                yield response
        finally:
            del self.owners[owner]
            self.plane.disown(owner)
            _log.info("a gateway detached: its legs are freed once idle")

    async def _command(self, owner: str, request: pb.AttachRequest, out: Subscription[pb.AttachResponse]) -> None:
        which = request.WhichOneof("command")
        if which == "open_legs":
            ask = request.open_legs
            if not 1 <= ask.count <= MAX_LEGS_PER_REQUEST:
                raise InvalidArgument(f"open_legs.count: {ask.count} is not between 1 and {MAX_LEGS_PER_REQUEST}")
            try:
                legs = await self.plane.open_legs(ask.count, owner)
            except NoPortFree as exc:
                out.put(pb.AttachResponse(legs_opened=pb.LegsOpened(request_id=ask.request_id, error=str(exc))))
                return
            for leg in legs:
                self.owner_of[leg.leg_id] = owner
            opened = [
                pb.Leg(leg_id=x.leg_id, address=x.address, rtp_port=x.rtp_port, rtcp_port=x.rtcp_port) for x in legs
            ]
            out.put(pb.AttachResponse(legs_opened=pb.LegsOpened(request_id=ask.request_id, legs=opened)))
        elif which == "set_remote":
            remote = request.set_remote
            _check_leg(remote.leg_id, "set_remote.leg_id")
            codecs = _codecs(remote)
            self.plane.set_remote(
                remote.leg_id,
                _address(remote.address),
                _port(remote.rtp_port, "set_remote.rtp_port"),
                _port(remote.rtcp_port, "set_remote.rtcp_port"),
                codecs,
                DIRECTIONS.get(remote.direction, "sendrecv"),
                _srtp_keys(remote),
            )
        elif which == "connect":
            join = request.connect
            if not CALL_ID_RE.fullmatch(join.call_id):
                raise InvalidArgument("connect.call_id: letters, digits, '.', '_' or '-', at most 128")
            _check_leg(join.home_leg_id, "connect.home_leg_id")
            _check_leg(join.other_leg_id, "connect.other_leg_id")
            self.calls[join.call_id] = (join.home_leg_id, join.other_leg_id)
            self.plane.connect(join.call_id, join.home_leg_id, join.other_leg_id)
        elif which == "play":
            _check_leg(request.play.leg_id, "play.leg_id")
            self.plane.play(request.play.leg_id, self._sound(request.play.file), request.play.loop)
        elif which == "stop_play":
            _check_leg(request.stop_play.leg_id, "stop_play.leg_id")
            self.plane.stop_play(request.stop_play.leg_id)
        elif which == "close_legs":
            for leg_id in request.close_legs.leg_ids:
                _check_leg(leg_id, "close_legs.leg_ids")
            closing = set(request.close_legs.leg_ids)
            self.plane.close_legs(list(closing))
            for leg_id in closing:
                self.owner_of.pop(leg_id, None)
            for call_id in [c for c, legs in self.calls.items() if closing.issuperset(legs)]:
                del self.calls[call_id]
        else:
            raise InvalidArgument("an attach request needs a command")

    def _sound(self, name: str) -> Path | None:
        """A file the service may play: the music on hold (empty), or one shipped with the product.
        Never a path from the request (a stream must not read the server's files to a phone)."""
        if not name:
            return self.music_on_hold
        if problem(name, 128) or "/" in name or "\\" in name or name.startswith("."):
            raise InvalidArgument("play.file: the name of a sound file shipped with the product")
        path = ASSETS / name
        if not path.is_file():
            raise InvalidArgument("play.file: no such sound file")
        return path

    def on_event(self, event: Event) -> None:
        """The workers' news: digits and finished files go to the gateway that owns the leg."""
        if isinstance(event, LegFreed):
            self.owner_of.pop(event.leg_id, None)
            for call_id in [c for c, legs in self.calls.items() if event.leg_id in legs]:
                del self.calls[call_id]
            return
        if not isinstance(event, Digit | PlayFinished):
            return
        owner = self.owners.get(self.owner_of.get(event.leg_id, ""))
        if owner is None:
            return
        if isinstance(event, Digit):
            digit = pb.Digit(leg_id=event.leg_id, digit=event.digit, duration_ms=event.duration_ms)
            owner.put(pb.AttachResponse(digit=digit))
        else:
            owner.put(pb.AttachResponse(play_finished=pb.PlayFinished(leg_id=event.leg_id)))

    # -- views -----------------------------------------------------------------------------------

    async def ListLegs(
        self, request: pb.ListLegsRequest, context: Ctx[pb.ListLegsRequest, pb.ListLegsResponse]
    ) -> pb.ListLegsResponse:
        response = pb.ListLegsResponse()
        for leg in await self.plane.legs():
            response.legs.add(
                leg=pb.Leg(leg_id=leg.leg_id, address=leg.address, rtp_port=leg.rtp_port, rtcp_port=leg.rtcp_port),
                call_id=leg.call_id,
                connected_to=leg.connected_to,
                remote=leg.remote,
                packets_in=leg.packets_in,
                packets_out=leg.packets_out,
                packets_dropped=leg.packets_dropped,
                playing=leg.playing,
                srtp=leg.srtp,
            )
        return response

    async def ListRecordings(
        self, request: pb.ListRecordingsRequest, context: Ctx[pb.ListRecordingsRequest, pb.ListRecordingsResponse]
    ) -> pb.ListRecordingsResponse:
        if request.call_id and not CALL_ID_RE.fullmatch(request.call_id):
            raise InvalidArgument("call_id: letters, digits, '.', '_' or '-', at most 128")
        since = _seconds(request.since) if request.HasField("since") else None
        until = _seconds(request.until) if request.HasField("until") else None
        if since is not None and until is not None and until < since:
            raise InvalidArgument("until: before since")
        found = self.catalog.list(request.call_id, since, until)[: request.limit or DEFAULT_LIST_LIMIT]
        return pb.ListRecordingsResponse(recordings=[recording_pb(e) for e in found])

    async def GetRecording(
        self, request: pb.GetRecordingRequest, context: Ctx[pb.GetRecordingRequest, pb.GetRecordingResponse]
    ) -> AsyncIterator[pb.GetRecordingResponse]:
        if problem(request.segment_id, 2 * MAX_ID):
            raise InvalidArgument("segment_id: a segment id like <call id>/<n>")
        entry = self.catalog.get(request.segment_id)
        if entry is None:
            raise NotFound("no recording of this server has that segment id")
        yield pb.GetRecordingResponse(recording=recording_pb(entry))
        try:
            file = (self.catalog.folder / entry.file).open("rb")
        except OSError as exc:
            raise NotFound(f"the recording's file is gone ({exc.strerror})") from None
        with file:
            while chunk := await asyncio.to_thread(file.read, CHUNK):
                yield pb.GetRecordingResponse(chunk=chunk)


def recording_pb(entry: Entry) -> pb.Recording:
    message = pb.Recording(
        segment_id=entry.segment_id,
        call_id=entry.call_id,
        segment=entry.segment,
        local_number=entry.local_number,
        local_name=entry.local_name,
        remote_number=entry.remote_number,
        remote_name=entry.remote_name,
        held=entry.held,
        file=entry.file,
        duration_ms=entry.duration_ms,
        size_bytes=entry.size_bytes,
        sha256=entry.sha256,
        error=entry.error,
    )
    message.started_at.FromMicroseconds(round(entry.started_at * 1e6))
    if entry.ended_at is not None:
        message.ended_at.FromMicroseconds(round(entry.ended_at * 1e6))
    return message


def _seconds(stamp: Timestamp) -> float:
    return float(stamp.ToMicroseconds()) / 1e6


def _check_leg(leg_id: str, key: str) -> None:
    if not leg_id or problem(leg_id, MAX_ID):
        raise InvalidArgument(f"{key}: a leg id from open_legs")


def _address(value: str) -> str:
    """An IP literal: the media service never resolves a name it is given."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InvalidArgument("set_remote.address: an IP address") from None


def _port(value: int, key: str) -> int:
    if not 1 <= value <= 65535:
        raise InvalidArgument(f"{key}: {value} is not a port")
    return value


def _srtp_keys(remote: pb.SetRemote) -> tuple[bytes, bytes] | None:
    """The SRTP keys of a SetRemote: both 30 bytes, or both empty (plain RTP)."""
    send, recv = remote.srtp_send_key, remote.srtp_recv_key
    if not send and not recv:
        return None
    if len(send) != SRTP_KEY or len(recv) != SRTP_KEY:
        raise InvalidArgument(f"set_remote.srtp_send_key, srtp_recv_key: {SRTP_KEY} bytes each, or both empty")
    return send, recv


def _codecs(remote: pb.SetRemote) -> list[tuple[int, str, int]]:
    if len(remote.codecs) > MAX_CODECS:
        raise InvalidArgument(f"set_remote.codecs: more than {MAX_CODECS}")
    codecs = []
    for codec in remote.codecs:
        if codec.payload_type > 127:
            raise InvalidArgument(f"set_remote.codecs: payload type {codec.payload_type} is above 127")
        if codec.encoding in ENCODINGS:
            codecs.append((codec.payload_type, codec.encoding, codec.clock_rate or 8000))
    return codecs
