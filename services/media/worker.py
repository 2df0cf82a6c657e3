"""A media worker process: relays, plays and records the RTP of its share of the legs.

Started by ``Plane`` as ``python -m services.media.worker --fd N ...`` with one end of a socketpair:
commands come in on it in order (``channel.py``), replies and events go out. The worker ends by
itself when the socket closes (the media service ended, even by kill -9): it never relays or holds
ports for a process that is gone. One uvloop event loop per process watches the legs' sockets; the
packets themselves are taken, checked, rewritten and sent in C (``_relay``): no Python per packet.
What a recorded leg sends is kept there and handed to the recorder in batches (``drain``).

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
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from services.media import _relay, g711
from services.media.channel import Channel, Message
from services.media.legs import ENCODING_NAMES, Leg, bind_pair
from services.media.player import TICK, Playback, Track, Tracks
from services.media.recorder import Recorder
from services.media.wav import WavError

_log = logging.getLogger("services.media.worker")

COUNTERS = (  # and the relay's: packets_in, packets_relayed, packets_dropped
    "packets_played",
    "digits",
    "recording_errors",
    "bytes_recorded",
    "legs_freed",
)
STOPPED = "the media service stopped"
DRAIN_EVERY = 0.02  # seconds between two hand-overs of the recorded legs' audio to the recorder
DRAIN_CHUNK = 32  # legs handed over between two turns of the loop
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
        self.recorder = Recorder(self.emit, self.counters, self.drain_call)
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
        _relay.set_digit_handler(self.on_digit)
        self.recorder.start()
        jobs = (self._run_commands(), self._tick_players(), self._push_counters(), self._free_idle(), self._drain())
        for job in jobs:
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
                self._drain_for(message)
                result = handler(message)
                if result is not None:
                    await result
            except Exception:
                _log.exception("command %s failed", message.get("op"))

    def shutdown(self, why: str) -> None:
        self.recorder.close_all(why)
        for leg in list(self.legs.values()):
            self._forget(leg)
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
            leg = Leg(f"w{self.index}-{self._next_leg}", self.address, port, owner, rtp_sock, rtcp_sock)
            self._attach(leg)
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
            )  # a ValueError (an address not of the leg's family) is logged by the command loop
            keys = message.get("srtp")
            leg.set_srtp(*(bytes.fromhex(key) for key in keys) if keys else (b"", b""))

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
        fds = [os.dup(leg.rtp.fileno()), os.dup(leg.rtcp.fileno())]
        state = leg.stats()
        state.update(
            remote_rtp=leg.remote_rtp,
            remote_rtcp=leg.remote_rtcp,
            codecs=[[pt, name, leg.clock_rates[pt]] for pt, name in leg.codec_names.items()],
            direction=_direction(leg),
            disowned=leg.disowned_at,
            last_rtp=leg.last_rtp,
            stream=leg.fast.stream_state(),
            srtp_keys=[key.hex() for key in leg.srtp_keys] if leg.srtp_keys else None,
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
        rtp_sock, rtcp_sock = (socket.socket(fileno=fd) for fd in fds)
        leg = Leg(state["leg_id"], state["address"], state["rtp_port"], state["owner"], rtp_sock, rtcp_sock)
        if state["remote_rtp"] is not None:
            address, rtp_port = state["remote_rtp"]
            leg.set_remote(address, rtp_port, state["remote_rtcp"][1], state["codecs"], state["direction"])
        leg.disowned_at = state["disowned"]
        if state.get("srtp_keys"):
            leg.set_srtp(*(bytes.fromhex(key) for key in state["srtp_keys"]))
        stream = state["stream"]
        leg.fast.resume_stream(
            stream["ssrc"], stream["sequence"], stream["timestamp"], stream["sent"], stream["started"]
        )
        leg.fast.last_rtp = state["last_rtp"]
        leg.fast.packets_in, leg.fast.packets_out = state["packets_in"], state["packets_out"]
        leg.fast.packets_dropped = state["packets_dropped"]
        self._attach(leg)
        if state["play"] is not None:
            file, loop, position = state["play"]
            self.play({"leg_id": leg.leg_id, "file": file, "loop": loop, "position": position})

    async def stop(self, message: Message) -> None:
        self.recorder.close_all(STOPPED)
        if self.channel is not None:
            await self.channel.drain()
            self.channel.close()  # on_channel_closed ends the rest

    # The data path.

    def on_digit(self, leg_id: str, key: str, duration_ms: int) -> None:
        """An RFC 4733 key ended on a leg (reported by the relay once per key)."""
        self.counters["digits"] += 1
        self.emit({"event": "digit", "leg_id": leg_id, "digit": key, "duration_ms": duration_ms})

    def drain(self, legs: Iterable[Leg]) -> None:
        """Hands what the legs sent since the last time to the recorder."""
        for leg in legs:
            if leg.call_id:
                taps = leg.fast.take_taps()
                if taps:
                    self.recorder.taps(leg.call_id, leg.channel, taps, ENCODING_NAMES)

    def drain_call(self, call_id: str | None) -> None:
        """The recorder's hand-over before a cut: the call's legs (every leg for None)."""
        self.drain(leg for leg in list(self.legs.values()) if call_id is None or leg.call_id == call_id)

    async def _drain(self) -> None:
        """Hands the audio over every DRAIN_EVERY, a few legs at a time between turns of the loop."""
        while True:
            await asyncio.sleep(DRAIN_EVERY)
            legs = [leg for leg in self.legs.values() if leg.call_id]
            for start in range(0, len(legs), DRAIN_CHUNK):
                self.drain(leg for leg in legs[start : start + DRAIN_CHUNK] if leg.leg_id in self.legs)
                await asyncio.sleep(0)

    def _drain_for(self, message: Message) -> None:
        """Before a command changes who a leg sends for, what it sent so far goes to its call."""
        op = message.get("op")
        if op == "connect":
            ids = [message["home_leg"], message["other_leg"]]
        elif op == "close_legs":
            ids = list(message["leg_ids"])
        elif op == "release":
            ids = [message["leg_id"]]
        else:
            return
        legs = [leg for leg in (self.legs.get(leg_id) for leg_id in ids) if leg is not None]
        self.drain([*legs, *(leg.partner for leg in legs if leg.partner is not None)])

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
                if leg.send(playback, 0, law, 0, playback.sequence, playback.timestamp, frame) is not None:
                    self.counters["packets_played"] += 1  # and kept for the recording, as a relayed one

    async def _push_counters(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.emit({"event": "counters", "worker": self.index, "counters": self.totals()})

    def totals(self) -> dict[str, int]:
        totals = dict(self.counters)
        totals.update(_relay.counters())
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

    def _attach(self, leg: Leg) -> None:
        assert leg.rtp is not None and leg.rtcp is not None
        loop = asyncio.get_running_loop()
        loop.add_reader(leg.rtp.fileno(), leg.fast.read_rtp)
        loop.add_reader(leg.rtcp.fileno(), leg.fast.read_rtcp)
        self.legs[leg.leg_id] = leg

    def _forget(self, leg: Leg) -> None:
        self.legs.pop(leg.leg_id, None)
        loop = asyncio.get_running_loop()
        for sock in (leg.rtp, leg.rtcp):
            if sock is not None:
                loop.remove_reader(sock.fileno())
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
