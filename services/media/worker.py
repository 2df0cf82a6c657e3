"""A media worker process: relays, plays and records the RTP of its share of the legs.

Started by ``Plane`` as ``python -m services.media.worker --fd N ...`` with one end of a socketpair:
commands come in on it in order (``channel.py``), replies and events go out. The worker ends by
itself when the socket closes (the media service ended, even by kill -9): it never relays or holds
ports for a process that is gone. One uvloop event loop per process (uvloop costs a third of the
default loop per packet); the hot path is ``on_rtp``: one dict lookup, one header rewrite, one send.

Commands run one after the other from a queue, since some wait (binding a leg's sockets, a leg moved
in from another worker): a later command never overtakes an earlier one. A leg moves between
workers (so that the legs of a call relay inside one process) as ``release`` on its worker, whose
reply carries its sockets to the plane, which hands them on (``handoff``, taken at once, outside
the queue) to the worker whose ``adopt`` waits for them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from services.media import g711, rtp
from services.media.channel import Channel, Message
from services.media.legs import Address, Leg, RtpProtocol, bind_pair
from services.media.player import TICK, Playback, Track, Tracks
from services.media.recorder import Recorder
from services.media.wav import WavError

_log = logging.getLogger("services.media.worker")

COUNTERS = (
    "packets_in",
    "packets_relayed",
    "packets_dropped",
    "packets_played",
    "digits",
    "recording_errors",
    "bytes_recorded",
    "legs_freed",
)
STOPPED = "the media service stopped"
GC_THRESHOLD = 100_000  # allocations between two young collections (the default is 700)


class Worker:
    """One worker's legs and the commands that drive them."""

    def __init__(self, index: int, address: str, ports: tuple[int, int], music: Track, idle_seconds: float):
        self.index = index
        self.address = address
        self.rtp_ports = [port for port in range(ports[0], ports[1]) if port % 2 == 0]
        self.music = music
        self.idle_seconds = idle_seconds
        self.tracks = Tracks()
        self.legs: dict[str, Leg] = {}
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.recorder = Recorder(self.emit, self.counters)
        self.channel: Channel | None = None
        self.done = asyncio.Event()
        self._commands: asyncio.Queue[Message] = asyncio.Queue()
        self._handoffs: dict[str, tuple[Message, list[int]]] = {}
        self._handoff_arrived = asyncio.Event()
        self._next_leg = 0
        self._next_port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._handlers: dict[str, Callable[[Message], Awaitable[None] | None]] = {
            "open_legs": self.open_legs,
            "set_remote": self.set_remote,
            "connect": self.connect,
            "play": self.play,
            "stop_play": self.stop_play,
            "close_legs": self.close_legs,
            "disown": self.disown,
            "record": self.record,
            "stop_recording": self.stop_recording,
            "list": self.list_legs,
            "ping": self.ping,
            "release": self.release,
            "adopt": self.adopt,
            "stop": self.stop,
        }

    # The control channel.

    def start(self, sock: socket.socket) -> None:
        self.channel = Channel(sock, self.on_message, self.on_channel_closed)
        loop = asyncio.get_running_loop()
        self.recorder.start()
        for job in (self._run_commands(), self._tick_players(), self._push_counters(), self._free_idle()):
            self._tasks.append(loop.create_task(job))
        self.emit({"event": "ready", "worker": self.index})

    def emit(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        if self.channel is not None:
            self.channel.send(message, fds or [])

    def on_message(self, message: Message) -> None:
        if message.get("op") == "handoff":
            assert self.channel is not None
            fds = [self.channel.fds.popleft() for _ in range(int(message.get("fds", 0)))]
            self._handoffs[message["move"]] = (message, fds)
            self._handoff_arrived.set()
        else:
            self._commands.put_nowait(message)

    def on_channel_closed(self) -> None:
        # The media service is gone: close the files properly, free the ports, end.
        self.channel = None
        self.shutdown(STOPPED)

    async def _run_commands(self) -> None:
        while True:
            message = await self._commands.get()
            handler = self._handlers.get(message.get("op", ""))
            if handler is None:
                _log.error("unknown command %r", message.get("op"))
                continue
            try:
                result = handler(message)
                if result is not None:
                    await result
            except Exception:
                _log.exception("command %s failed", message.get("op"))

    def shutdown(self, why: str) -> None:
        self.recorder.close_all(why)
        for leg in self.legs.values():
            leg.close()
        self.legs.clear()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.done.set()

    # Commands.

    async def open_legs(self, message: Message) -> None:
        count, owner = int(message["count"]), str(message["owner"])
        opened: list[Leg] = []
        for _ in range(len(self.rtp_ports)):
            if len(opened) == count:
                break
            port = self.rtp_ports[self._next_port]
            self._next_port = (self._next_port + 1) % len(self.rtp_ports)
            try:
                rtp_sock, rtcp_sock = bind_pair(self.address, port)
            except OSError:
                continue  # in use (by a leg here, a leg moved to another worker, or anyone else)
            self._next_leg += 1
            leg = Leg(f"w{self.index}-{self._next_leg}", self.address, port, owner)
            await self._attach(leg, rtp_sock, rtcp_sock)
            opened.append(leg)
        if len(opened) < count:
            for leg in opened:
                self._forget(leg)
            self.emit({"reply": message["id"], "error": f"no {count} ports free on worker {self.index}"})
            return
        self.emit({"reply": message["id"], "legs": [self._info(leg) for leg in opened]})

    def set_remote(self, message: Message) -> None:
        leg = self._leg(message)
        if leg is not None:
            leg.set_remote(
                message["address"], message["rtp_port"], message["rtcp_port"], message["codecs"], message["direction"]
            )

    def connect(self, message: Message) -> None:
        home = self.legs.get(message["home_leg"])
        other = self.legs.get(message["other_leg"])
        if home is None or other is None:
            _log.warning(
                "connect %s: leg %s or %s is not here", message["call_id"], message["home_leg"], message["other_leg"]
            )
            return
        home.connect(other, message["call_id"], home=True)
        other.connect(home, message["call_id"], home=False)

    def play(self, message: Message) -> None:
        leg = self._leg(message)
        if leg is None:
            return
        try:
            track = self.music if message.get("file") is None else self.tracks.get(Path(message["file"]))
        except (WavError, OSError) as error:
            _log.error("cannot play to %s: %s", leg.leg_id, error)
            self.emit({"event": "play_finished", "leg_id": leg.leg_id, "error": str(error)})
            return
        leg.playback = Playback(track, bool(message.get("loop")), int(message.get("position", 0)))

    def stop_play(self, message: Message) -> None:
        leg = self._leg(message)
        if leg is not None:
            leg.playback = None

    def close_legs(self, message: Message) -> None:
        for leg_id in message["leg_ids"]:
            leg = self.legs.get(leg_id)
            if leg is not None:
                self._forget(leg)

    def disown(self, message: Message) -> None:
        now = time.monotonic()
        for leg in self.legs.values():
            if leg.owner == message["owner"] and leg.disowned_at is None:
                leg.disowned_at = now

    def record(self, message: Message) -> None:
        self.recorder.record(message["call_id"], message["segment_id"], Path(message["path"]), float(message["at"]))

    def stop_recording(self, message: Message) -> None:
        self.recorder.stop(message["call_id"], float(message["at"]))

    def list_legs(self, message: Message) -> None:
        self.emit({"reply": message["id"], "legs": [leg.stats() for leg in self.legs.values()]})

    def ping(self, message: Message) -> None:
        self.emit({"reply": message["id"]})

    def release(self, message: Message) -> None:
        """Gives a leg up to another worker: its state, and its sockets (the ports stay bound)."""
        leg = self.legs.get(message["leg_id"])
        if leg is None or leg.rtp is None or leg.rtcp is None:
            self.emit({"reply": message["id"], "move": message["move"], "error": f"no leg {message['leg_id']} here"})
            return
        rtp_sock, rtcp_sock = (transport.get_extra_info("socket") for transport in (leg.rtp, leg.rtcp))
        fds = [os.dup(rtp_sock.fileno()), os.dup(rtcp_sock.fileno())]
        state = leg.stats()
        state.update(
            remote_rtp=leg.remote_rtp,
            remote_rtcp=leg.remote_rtcp,
            codecs=[[pt, name, leg.clock_rates[pt]] for pt, name in leg.codec_names.items()],
            direction=_direction(leg),
            disowned=leg.disowned_at,
            last_rtp=leg.last_rtp,
            stream=leg.stream.state(),
            play=None,
        )
        if leg.playback is not None:
            music = leg.playback.track is self.music
            state["play"] = [None if music else str(leg.playback.track.path), leg.playback.loop, leg.playback.position]
        self._forget(leg)
        self.emit({"reply": message["id"], "move": message["move"], "state": state, "fds": len(fds)}, fds)
        for fd in fds:
            os.close(fd)

    async def adopt(self, message: Message) -> None:
        """Takes over a leg released by another worker, once its sockets have arrived."""
        move = message["move"]
        while move not in self._handoffs:
            self._handoff_arrived.clear()
            await self._handoff_arrived.wait()
        handoff, fds = self._handoffs.pop(move)
        if "error" in handoff:
            _log.error("leg %s could not move here: %s", message["leg_id"], handoff["error"])
            return
        state = handoff["state"]
        leg = Leg(state["leg_id"], state["address"], state["rtp_port"], state["owner"])
        if state["remote_rtp"] is not None:
            address, rtp_port = state["remote_rtp"]
            leg.set_remote(address, rtp_port, state["remote_rtcp"][1], state["codecs"], state["direction"])
        leg.disowned_at = state["disowned"]
        leg.last_rtp = state["last_rtp"]
        leg.stream = rtp.OutboundStream.resume(state["stream"])
        leg.packets_in, leg.packets_out = state["packets_in"], state["packets_out"]
        leg.packets_dropped = state["packets_dropped"]
        rtp_sock, rtcp_sock = (socket.socket(fileno=fd) for fd in fds)
        await self._attach(leg, rtp_sock, rtcp_sock)
        if state["play"] is not None:
            file, loop, position = state["play"]
            self.play({"leg_id": leg.leg_id, "file": file, "loop": loop, "position": position})

    async def stop(self, message: Message) -> None:
        self.recorder.close_all(STOPPED)
        if self.channel is not None:
            await self.channel.drain()
            self.channel.close()  # on_channel_closed ends the rest

    # The data path.

    def on_rtp(self, leg: Leg, data: bytes, addr: Address) -> None:
        """One datagram on a leg's RTP port: the hot path (every packet of every call), so the
        usual packet (a plain 12-byte header) is read in place, without building an object."""
        if addr != leg.remote_rtp:
            leg.packets_dropped += 1
            self.counters["packets_dropped"] += 1
            return
        leg.packets_in += 1
        leg.last_rtp = time.monotonic()
        if len(data) < 12 or data[0] >> 6 != 2:
            return
        second = data[1]
        encoding = leg.codec_names.get(second & 0x7F)
        if encoding is None or not leg.party_sends:
            return
        if data[0] == 0x80:
            payload = data[12:]
        else:  # CSRCs, a header extension or padding: read in full
            packet = rtp.parse(data)
            if packet is None:
                return
            payload = packet.payload
        sequence, timestamp, ssrc = rtp.FIELDS.unpack_from(data, 2)
        if encoding == g711.TELEPHONE_EVENT:
            self._digit(leg, second & 0x7F, ssrc, timestamp, payload)
        out = leg.partner
        if out is None or out.playback is not None:
            return
        sent = out.send(leg, ssrc, encoding, second & 0x80, sequence, timestamp, payload)
        if sent is not None:
            self.counters["packets_relayed"] += 1
            if out.call_id and sent[0] != g711.TELEPHONE_EVENT:
                self.recorder.tap(out.call_id, out.channel, sent[0], sent[1])

    def on_rtcp(self, leg: Leg, data: bytes, addr: Address) -> None:
        if addr != leg.remote_rtcp:
            leg.packets_dropped += 1
            self.counters["packets_dropped"] += 1
            return
        out = leg.partner
        if out is not None and out.rtcp is not None and out.remote_rtcp is not None:
            out.rtcp.sendto(data, out.remote_rtcp)

    def _digit(self, leg: Leg, payload_type: int, ssrc: int, timestamp: int, payload: bytes) -> None:
        event = rtp.parse_event(payload)
        if event is None or not event.end or event.key is None:
            return
        if leg.last_digit == (ssrc, timestamp):
            return  # the end packet is sent three times (RFC 4733 section 2.5.1.4)
        leg.last_digit = (ssrc, timestamp)
        clock = leg.clock_rates.get(payload_type, 8000) or 8000
        self.counters["digits"] += 1
        self.emit(
            {"event": "digit", "leg_id": leg.leg_id, "digit": event.key, "duration_ms": event.duration * 1000 // clock}
        )

    async def _tick_players(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += TICK
            delay = due - loop.time()
            if delay < -0.2:
                due = loop.time()  # the loop stalled: go on from now rather than send a burst
            await asyncio.sleep(max(delay, 0))
            for leg in list(self.legs.values()):
                playback = leg.playback
                if playback is None:
                    continue
                law = leg.law or g711.PCMU
                frame = playback.next_frame(law)
                if frame is None:
                    leg.playback = None
                    self.emit({"event": "play_finished", "leg_id": leg.leg_id, "error": ""})
                    continue
                sent = leg.send(playback, 0, law, 0, playback.sequence, playback.timestamp, frame)
                if sent is not None:
                    self.counters["packets_played"] += 1
                    if leg.call_id:
                        self.recorder.tap(leg.call_id, leg.channel, law, frame)

    async def _push_counters(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.emit({"event": "counters", "worker": self.index, "counters": self.totals()})

    def totals(self) -> dict[str, int]:
        totals = dict(self.counters)
        totals["legs"] = len(self.legs)
        totals["playing"] = sum(1 for leg in self.legs.values() if leg.playback is not None)
        totals["recordings"] = len(self.recorder.recordings)
        return totals

    async def _free_idle(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.idle_seconds / 4))
            now = time.monotonic()
            for leg in list(self.legs.values()):
                if leg.disowned_at is not None and now - max(leg.last_rtp, leg.disowned_at) >= self.idle_seconds:
                    self._forget(leg)
                    self.counters["legs_freed"] += 1
                    self.emit({"event": "leg_freed", "leg_id": leg.leg_id, "why": "idle"})

    # Legs.

    async def _attach(self, leg: Leg, rtp_sock: socket.socket, rtcp_sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        leg.rtp, _ = await loop.create_datagram_endpoint(lambda: RtpProtocol(leg, self.on_rtp), sock=rtp_sock)
        leg.rtcp, _ = await loop.create_datagram_endpoint(lambda: RtpProtocol(leg, self.on_rtcp), sock=rtcp_sock)
        self.legs[leg.leg_id] = leg

    def _forget(self, leg: Leg) -> None:
        self.legs.pop(leg.leg_id, None)
        leg.close()

    def _leg(self, message: Message) -> Leg | None:
        leg = self.legs.get(message["leg_id"])
        if leg is None:
            _log.warning("%s: no leg %s", message["op"], message["leg_id"])
        return leg

    @staticmethod
    def _info(leg: Leg) -> dict[str, Any]:
        return {"leg_id": leg.leg_id, "address": leg.address, "rtp_port": leg.port, "rtcp_port": leg.port + 1}


def _direction(leg: Leg) -> str:
    return {(True, True): "sendrecv", (True, False): "sendonly", (False, True): "recvonly"}.get(
        (leg.party_sends, leg.party_receives), "inactive"
    )


async def serve(args: argparse.Namespace) -> None:
    sock = socket.socket(fileno=args.fd)
    try:
        music = Track.load(Path(args.music))
    except WavError as error:
        # The plane waits for "ready": say why there will be none.
        sock.sendall(_framed({"event": "failed", "error": str(error)}))
        return
    worker = Worker(args.index, args.address, (args.first_port, args.last_port), music, args.idle_seconds)
    worker.start(sock)
    # Every packet makes a few short-lived tuples, which count toward the collector's thresholds:
    # its full passes over everything loaded (numpy, the music) stalled the relay for tens of ms.
    # What exists now is frozen out of the collection; cycles are rare here, collected seldom.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 1000)
    await worker.done.wait()


def _framed(message: Message) -> bytes:
    import json

    body = json.dumps(message).encode()
    return len(body).to_bytes(4, "big") + body


def main() -> None:
    parser = argparse.ArgumentParser(description="A media worker (started by the media service).")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--first-port", type=int, required=True)
    parser.add_argument("--last-port", type=int, required=True)
    parser.add_argument("--music", required=True)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    args = parser.parse_args()
    # Ctrl-C reaches the whole process group: the media service decides when its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format=f"media worker {args.index}: %(message)s")
    import uvloop

    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
