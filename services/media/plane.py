"""The media service's data plane, seen from its asyncio loop: worker processes and their legs.

``Plane.start`` spawns the workers (``python -m services.media.worker``), each with one end of a
socketpair and its own share of the port range; a leg lives on one worker and its id names that
worker ("w0-17"). Commands without a result are sent at once and carried out in the order sent (one
ordered channel per worker); ``open_legs`` and ``legs`` wait for the answer. Events (digits, a file
played to its end, recordings closed or failed, legs freed) reach ``on_event``. Counters come from
the workers every second.

A call's legs relay inside one process: when ``connect`` joins legs of different workers, the legs
not on the call's worker move there (the worker releases the leg's sockets, which travel over the
socketpairs as file descriptors; the port and the leg id stay). A call's worker is the home leg's
at its first connect, and stays so (its recording lives there).

Workers end by themselves when their control socket closes, so a media service killed with -9 leaves
no worker relaying nor any port bound. A worker that dies is reported through ``leg_freed`` for
each of its legs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.media.channel import Channel, Message

_log = logging.getLogger(__name__)

# The music on hold shipped with the product (scripts/make_hold_music.py).
MUSIC_ON_HOLD = Path(__file__).parent / "assets" / "hold.wav"
# Where the package lives, for the workers' import path (whatever the service's working directory).
_ROOT = str(Path(__file__).resolve().parents[2])
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
ENCODINGS = ("PCMU", "PCMA", "telephone-event")


@dataclass(frozen=True)
class LegInfo:
    """Where a leg's party sends: this media service's address and the leg's ports."""

    leg_id: str
    address: str
    rtp_port: int
    rtcp_port: int


@dataclass(frozen=True)
class LegStats:
    """A leg as its worker reports it."""

    leg_id: str
    address: str
    rtp_port: int
    rtcp_port: int
    owner: str
    call_id: str
    connected_to: str
    remote: str  # "host:port" of its party's RTP, "" until set_remote
    packets_in: int
    packets_out: int
    packets_dropped: int
    playing: bool
    worker: int
    srtp: bool = False


@dataclass(frozen=True)
class Digit:
    """A key a leg's party pressed (RFC 4733), reported once at its end."""

    leg_id: str
    digit: str
    duration_ms: int


@dataclass(frozen=True)
class PlayFinished:
    """A file that does not loop played to its end (or could not be played: ``error``)."""

    leg_id: str
    error: str = ""


@dataclass(frozen=True)
class RecordingClosed:
    """A segment's file is complete: ``frames`` at 8 kHz; ``error`` says why it ended early, if it did."""

    call_id: str
    segment_id: str
    path: Path
    frames: int
    error: str = ""


@dataclass(frozen=True)
class RecordingFailed:
    """A segment's recording stopped on an error writing it (disk full, a directory not writable)."""

    call_id: str
    segment_id: str
    error: str


@dataclass(frozen=True)
class LegFreed:
    """A leg is gone without close_legs: its owner was disowned and it carried no RTP ("idle"), or its
    worker ended ("worker exited")."""

    leg_id: str
    why: str


Event = Digit | PlayFinished | RecordingClosed | RecordingFailed | LegFreed


class NoPortFree(Exception):
    """No worker has the ports for the legs asked for."""


class PlaneError(Exception):
    """A worker would not start, or is gone."""


class _Worker:
    """The plane's side of one worker process."""

    def __init__(self, index: int, ports: tuple[int, int], process: asyncio.subprocess.Process, channel: Channel):
        self.index = index
        self.ports = ports
        self.process = process
        self.channel = channel
        self.legs: set[str] = set()
        self.counters: dict[str, int] = {}
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.alive = True

    def send(self, message: Message, fds: Sequence[int] = ()) -> None:
        self.channel.send(message, fds)


class Plane:
    """The workers and the routing of commands to them (see the module docstring)."""

    def __init__(self, on_event: Callable[[Event], None]):
        self.on_event = on_event
        self.workers: list[_Worker] = []
        self._where: dict[str, _Worker] = {}  # leg id -> its worker
        self._calls: dict[str, _Worker] = {}  # call id -> the worker its legs relay on
        self._unrouted: dict[str, list[Message]] = {}  # recording commands for a call not connected yet
        self._replies: dict[int, tuple[_Worker, asyncio.Future[Message]]] = {}
        self._ids = itertools.count(1)
        self._stopping = False

    @classmethod
    async def start(
        cls,
        *,
        address: str,
        ports: tuple[int, int],
        workers: int,
        music_on_hold: Path,
        on_event: Callable[[Event], None],
        idle_seconds: float = 60.0,
    ) -> Plane:
        """Spawns ``workers`` workers over the port range ``ports`` (first and last port, both
        included: RTP on even ports, RTCP on the next one) and waits until each is ready."""
        rtp_ports = [port for port in range(ports[0], ports[1]) if port % 2 == 0]
        if workers < 1 or len(rtp_ports) < workers:
            raise ValueError(f"{workers} workers need at least as many port pairs in {ports[0]}-{ports[1]}")
        plane = cls(on_event)
        share = len(rtp_ports) // workers
        try:
            for index in range(workers):
                mine = rtp_ports[index * share : (index + 1) * share if index < workers - 1 else None]
                await plane._spawn(index, address, (mine[0], mine[-1] + 1), music_on_hold, idle_seconds)
            await asyncio.wait_for(asyncio.gather(*(worker.ready for worker in plane.workers)), READY_TIMEOUT)
        except BaseException:
            await plane.stop()
            raise
        return plane

    async def _spawn(self, index: int, address: str, ports: tuple[int, int], music: Path, idle: float) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")])))
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.media.worker",
                f"--fd={theirs.fileno()}",
                f"--index={index}",
                f"--address={address}",
                f"--first-port={ports[0]}",
                f"--last-port={ports[1]}",
                f"--music={music}",
                f"--idle-seconds={idle}",
                pass_fds=(theirs.fileno(),),
                env=env,
            )
        finally:
            theirs.close()
        worker: _Worker | None = None

        def on_message(message: Message) -> None:
            assert worker is not None
            self._on_message(worker, message)

        def on_close() -> None:
            assert worker is not None
            self._on_worker_gone(worker)

        worker = _Worker(index, ports, process, Channel(ours, on_message, on_close))
        self.workers.append(worker)

    # Commands.

    async def open_legs(self, count: int, owner: str) -> list[LegInfo]:
        """``count`` legs on one worker (the least loaded that has the ports); NoPortFree otherwise."""
        candidates = sorted((w for w in self.workers if w.alive), key=lambda w: len(w.legs))
        for worker in candidates:
            reply = await self._request(worker, {"op": "open_legs", "count": count, "owner": owner})
            if "error" in reply:
                continue
            legs = [LegInfo(**leg) for leg in reply["legs"]]
            for leg in legs:
                self._where[leg.leg_id] = worker
                worker.legs.add(leg.leg_id)
            return legs
        raise NoPortFree(f"no worker has {count} port pairs free")

    def set_remote(
        self,
        leg_id: str,
        address: str,
        rtp_port: int,
        rtcp_port: int,
        codecs: Sequence[tuple[int, str, int]],
        direction: str,
        srtp: tuple[bytes, bytes] | None = None,
    ) -> None:
        """Where the leg's party is: RTP is taken only from (address, rtp_port), RTCP from rtcp_port;
        ``srtp``: the keys it sends and receives with (SRTP), None for plain RTP."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
        codec_list = [[int(pt), name, int(clock)] for pt, name, clock in codecs]
        keys = [srtp[0].hex(), srtp[1].hex()] if srtp is not None else None
        self._to_leg(
            leg_id,
            {"op": "set_remote", "address": address, "rtp_port": rtp_port, "rtcp_port": rtcp_port},
            codecs=codec_list,
            direction=direction,
            srtp=keys,
        )

    def connect(self, call_id: str, home_leg: str, other_leg: str) -> None:
        """Joins two legs of a call (each leaves any partner it had); legs on another worker than the
        call's move there first."""
        home, other = self._where.get(home_leg), self._where.get(other_leg)
        if home is None or other is None:
            _log.error("connect %s: unknown leg %s", call_id, home_leg if home is None else other_leg)
            return
        target = self._calls.get(call_id)
        if target is None or not target.alive:
            target = home
        for leg_id, worker in ((home_leg, home), (other_leg, other)):
            if worker is not target:
                self._move(leg_id, worker, target)
        self._calls[call_id] = target
        target.send({"op": "connect", "call_id": call_id, "home_leg": home_leg, "other_leg": other_leg})
        for message in self._unrouted.pop(call_id, []):
            target.send(message)

    def play(self, leg_id: str, file: Path | None, loop: bool) -> None:
        """Plays a WAV file (None: the music on hold) to the leg instead of its partner's audio."""
        self._to_leg(leg_id, {"op": "play"}, file=None if file is None else str(file), loop=loop)

    def stop_play(self, leg_id: str) -> None:
        self._to_leg(leg_id, {"op": "stop_play"})

    def close_legs(self, leg_ids: Sequence[str]) -> None:
        """Frees the legs and their ports."""
        by_worker: dict[int, list[str]] = {}
        for leg_id in leg_ids:
            worker = self._where.pop(leg_id, None)
            if worker is not None:
                worker.legs.discard(leg_id)
                by_worker.setdefault(worker.index, []).append(leg_id)
        for index, ids in by_worker.items():
            self.workers[index].send({"op": "close_legs", "leg_ids": ids})

    def disown(self, owner: str) -> None:
        """The owner's control stream broke: its legs are freed once idle for ``idle_seconds``."""
        for worker in self.workers:
            if worker.alive:
                worker.send({"op": "disown", "owner": owner})

    def record(self, call_id: str, segment_id: str, path: Path, at: float) -> None:
        """Starts recording the call into ``path`` at wall time ``at`` (or cuts the current file there)."""
        self._to_call(
            call_id, {"op": "record", "call_id": call_id, "segment_id": segment_id, "path": str(path), "at": at}
        )

    def stop_recording(self, call_id: str, at: float) -> None:
        """Ends the call's current file at wall time ``at``."""
        self._to_call(call_id, {"op": "stop_recording", "call_id": call_id, "at": at})

    async def legs(self) -> list[LegStats]:
        replies = await asyncio.gather(*(self._request(w, {"op": "list"}) for w in self.workers if w.alive))
        found: list[LegStats] = []
        for worker, reply in zip((w for w in self.workers if w.alive), replies, strict=True):
            found.extend(LegStats(worker=worker.index, **leg) for leg in reply.get("legs", []))
        return found

    async def settled(self) -> None:
        """Waits until every worker has carried out the commands sent before (a barrier: say, before
        telling a phone where to send, once its leg's remote is set)."""
        await asyncio.gather(*(self._request(w, {"op": "ping"}) for w in self.workers if w.alive))

    def counters(self) -> dict[str, int]:
        """The workers' counters summed, as of their last report (every second)."""
        totals: dict[str, int] = {}
        for worker in self.workers:
            for name, value in worker.counters.items():
                totals[name] = totals.get(name, 0) + value
        return totals

    async def stop(self) -> None:
        """Closes the recordings (each gets its recording_closed) and ends the workers."""
        self._stopping = True
        for worker in self.workers:
            if worker.alive:
                worker.send({"op": "stop"})
        for worker in self.workers:
            try:
                await asyncio.wait_for(worker.process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                _log.error("media worker %d did not stop: killed", worker.index)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
            # Its last events are read before its end of the socket closes; give them a turn.
            for _ in range(100):
                if worker.channel.closed:
                    break
                await asyncio.sleep(0.01)
            worker.channel.close()

    # Routing.

    def _to_leg(self, leg_id: str, message: Message, **fields: Any) -> None:
        worker = self._where.get(leg_id)
        if worker is None:
            _log.warning("%s: unknown leg %s", message["op"], leg_id)
            return
        worker.send({**message, "leg_id": leg_id, **fields})

    def _to_call(self, call_id: str, message: Message) -> None:
        worker = self._calls.get(call_id)
        if worker is None:
            self._unrouted.setdefault(call_id, []).append(message)  # sent at the call's first connect
        else:
            worker.send(message)

    def _move(self, leg_id: str, source: _Worker, target: _Worker) -> None:
        """Moves a leg's sockets and state from ``source`` to ``target``; commands sent after this
        go to ``target``, which takes them once the leg has arrived."""
        move = f"{leg_id}@{next(self._ids)}"
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda done: self._hand_over(done, move, target))
        self._replies[request_id] = (source, future)
        source.send({"op": "release", "id": request_id, "leg_id": leg_id, "move": move})
        target.send({"op": "adopt", "leg_id": leg_id, "move": move})
        source.legs.discard(leg_id)
        target.legs.add(leg_id)
        self._where[leg_id] = target

    def _hand_over(self, done: asyncio.Future[Message], move: str, target: _Worker) -> None:
        if done.cancelled() or done.exception() is not None:
            reply: Message = {"error": f"its worker ended ({done.exception()})"}
        else:
            reply = done.result()
        fds = reply.pop("_fds", [])
        try:
            handoff = {"op": "handoff", "move": move, "fds": len(fds)}
            handoff.update({"state": reply["state"]} if "state" in reply else {"error": reply.get("error", "?")})
            target.send(handoff, fds)
        finally:
            for fd in fds:
                os.close(fd)

    async def _request(self, worker: _Worker, message: Message) -> Message:
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = (worker, future)
        worker.send({**message, "id": request_id})
        try:
            return await future
        finally:
            self._replies.pop(request_id, None)

    # What the workers say.

    def _on_message(self, worker: _Worker, message: Message) -> None:
        if "reply" in message:
            if "fds" in message:
                message["_fds"] = [worker.channel.fds.popleft() for _ in range(int(message["fds"]))]
            waiting = self._replies.pop(int(message["reply"]), None)
            if waiting is not None and not waiting[1].done():
                waiting[1].set_result(message)
            else:
                for fd in message.get("_fds", []):
                    os.close(fd)
            return
        kind = message.get("event")
        if kind == "counters":
            worker.counters = message["counters"]
        elif kind == "ready":
            if not worker.ready.done():
                worker.ready.set_result(None)
        elif kind == "failed":
            if not worker.ready.done():
                worker.ready.set_exception(PlaneError(f"media worker {worker.index}: {message['error']}"))
        elif kind == "digit":
            self._emit(Digit(message["leg_id"], message["digit"], int(message["duration_ms"])))
        elif kind == "play_finished":
            self._emit(PlayFinished(message["leg_id"], message.get("error", "")))
        elif kind == "recording_closed":
            self._emit(
                RecordingClosed(
                    message["call_id"],
                    message["segment_id"],
                    Path(message["path"]),
                    message["frames"],
                    message["error"],
                )
            )
        elif kind == "recording_failed":
            self._emit(RecordingFailed(message["call_id"], message["segment_id"], message["error"]))
        elif kind == "leg_freed":
            leg_id = message["leg_id"]
            if self._where.get(leg_id) is worker:
                del self._where[leg_id]
            worker.legs.discard(leg_id)
            self._emit(LegFreed(leg_id, message["why"]))
        else:
            _log.warning("media worker %d said %r", worker.index, kind)

    def _on_worker_gone(self, worker: _Worker) -> None:
        worker.alive = False
        if not worker.ready.done():
            worker.ready.set_exception(PlaneError(f"media worker {worker.index} ended before it was ready"))
        for request_id, (asked, future) in list(self._replies.items()):
            if asked is worker:
                del self._replies[request_id]
                if not future.done():
                    future.set_exception(PlaneError(f"media worker {worker.index} ended"))
        if self._stopping:
            return
        _log.error("media worker %d ended; its legs are lost", worker.index)
        for leg_id in sorted(worker.legs):
            self._where.pop(leg_id, None)
            self._emit(LegFreed(leg_id, "worker exited"))
        worker.legs.clear()

    def _emit(self, event: Event) -> None:
        try:
            self.on_event(event)
        except Exception:
            _log.exception("on_event failed for %r", event)
