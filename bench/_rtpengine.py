"""rtpengine (Debian ``rtpengine-daemon`` 10.5, userspace) as the media bench's reference relay.

Started as a foreground child with ``--config-file=none`` (else it loads /etc/rtpengine's file),
``--table=-1`` (no kernel module) and ``--delete-delay=0``; driven over the ng protocol with JSON
bodies. Calls are deleted before SIGTERM: rtpengine 10.5 segfaults on SIGTERM while a recorded call
is still in memory. Recording is ``--recording-method=pcap`` (the only method that works without the
kernel module) and the offer's ``record call`` flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import shutil
import signal
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=bench\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
)
AUDIO_PORT = re.compile(r"^m=audio (\d+) ", re.MULTILINE)


def available() -> str | None:
    """The rtpengine binary's path, or None when the package is not installed."""
    return shutil.which("rtpengine")


class RtpEngine:
    """One rtpengine process; ``open_calls`` sets up calls whose two sides are the generator's."""

    label = "rtpengine"

    def __init__(self, process: asyncio.subprocess.Process, ng_port: int, log: Path) -> None:
        self.process = process
        self.ng_port = ng_port
        self.log = log
        self.call_ids: list[str] = []
        self.record = False
        self._cookies = itertools.count()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    @classmethod
    async def start(cls, directory: Path, *, ports: tuple[int, int], ng_port: int, threads: int) -> RtpEngine:
        """Starts rtpengine on 127.0.0.1, recording (when asked per call) as pcap under ``directory``."""
        binary = available()
        if binary is None:
            raise RuntimeError("rtpengine not installed (Debian package rtpengine-daemon)")
        recordings = directory / "recordings"
        recordings.mkdir(parents=True, exist_ok=True)
        log = directory / "rtpengine.log"
        with log.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                binary,
                "--config-file=none",
                "--foreground",
                "--log-stderr",
                "--log-level=4",
                "--table=-1",
                "--interface=127.0.0.1",
                f"--listen-ng=127.0.0.1:{ng_port}",
                f"--port-min={ports[0]}",
                f"--port-max={ports[1]}",
                "--delete-delay=0",
                f"--num-threads={threads}",
                "--recording-method=pcap",
                f"--recording-dir={recordings}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
        engine = cls(process, ng_port, log)
        for _ in range(100):
            try:
                # A ping sent before rtpengine listens is lost: ask again soon.
                if (await asyncio.to_thread(engine.command, {"command": "ping"}, 0.1)).get("result") == "pong":
                    return engine
            except OSError:
                pass
            if process.returncode is not None:
                break
            await asyncio.sleep(0.05)
        await engine.close()
        raise RuntimeError(f"rtpengine did not answer ping; its log: {log}")

    @property
    def pids(self) -> list[int]:
        return [self.process.pid]

    def command(self, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """One ng command (blocking): a cookie and a JSON body each way."""
        self._socket.settimeout(timeout)
        cookie = f"b{next(self._cookies)}"
        self._socket.sendto(f"{cookie} {json.dumps(body)}".encode(), ("127.0.0.1", self.ng_port))
        while True:
            data = self._socket.recv(65535)
            got_cookie, _, reply = data.partition(b" ")
            if got_cookie.decode() == cookie:
                result: dict[str, Any] = json.loads(reply)
                return result

    def _offer_answer(self, call_id: str, port_a: int, port_b: int) -> tuple[int, int]:
        """Sets up one call: side A offers, side B answers; returns the ports A and B send to."""
        offer: dict[str, Any] = {
            "command": "offer",
            "call-id": call_id,
            "from-tag": "a",
            "sdp": SDP.format(port=port_a),
            "ICE": "remove",
        }
        if self.record:
            offer["record call"] = "yes"
        offered = self.command(offer)
        answered = self.command(
            {"command": "answer", "call-id": call_id, "from-tag": "a", "to-tag": "b", "sdp": SDP.format(port=port_b)}
        )
        for reply in (offered, answered):
            if reply.get("result") != "ok":
                raise RuntimeError(f"rtpengine refused {call_id}: {reply}")
        to_b = _audio_port(offered["sdp"])  # what B is told: where B sends
        to_a = _audio_port(answered["sdp"])  # what A is told: where A sends
        return to_a, to_b

    async def open_calls(self, sides: Sequence[tuple[int, int]], *, record: bool) -> list[tuple[str, int]]:
        """One call per (port of side A, port of side B); the destination of each side, in order."""
        self.record = record

        def setup() -> list[tuple[str, int]]:
            destinations: list[tuple[str, int]] = []
            for i, (port_a, port_b) in enumerate(sides):
                call_id = f"bench-{i}"
                to_a, to_b = self._offer_answer(call_id, port_a, port_b)
                self.call_ids.append(call_id)
                destinations += [("127.0.0.1", to_a), ("127.0.0.1", to_b)]
            return destinations

        return await asyncio.to_thread(setup)

    async def relayed(self) -> int | None:
        """The packets rtpengine relayed since it started (its ``statistics``)."""
        reply = await asyncio.to_thread(self.command, {"command": "statistics"})
        try:
            return int(reply["statistics"]["totalstatistics"]["relayedpackets"])
        except (KeyError, TypeError, ValueError):
            return None

    async def close(self) -> str:
        """Deletes the calls, then stops rtpengine; says how it ended."""

        def delete_all() -> None:
            for call_id in self.call_ids:
                self.command({"command": "delete", "call-id": call_id})
            self.call_ids.clear()

        if self.process.returncode is None:
            with contextlib.suppress(OSError):  # rtpengine gone: nothing left to delete
                await asyncio.to_thread(delete_all)
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._socket.close()
        code = self.process.returncode
        return "exited 0" if code == 0 else f"ended with {code} (log: {self.log})"

    def recordings(self) -> list[Path]:
        return sorted((self.log.parent / "recordings" / "pcaps").glob("*.pcap"))


def _audio_port(sdp: str) -> int:
    match = AUDIO_PORT.search(sdp)
    if match is None:
        raise RuntimeError(f"no m=audio line in rtpengine's SDP: {sdp!r}")
    return int(match.group(1))
