"""A real softphone for tests: baresip (Debian's 1.0), headless, driven over its ctrl_tcp module.

Each phone has a folder of its own with its config and account, registers like any desk phone
(digest as the server challenges), answers calls by itself when asked to, sends a sine tone of
its own frequency and writes what it hears to a WAV file (the ``sndfile`` module: one
``dump-<time>-dec.wav`` per call, 8 kHz mono). Commands (dial, hold, resume, hangup) and the
phone's events (REGISTER_OK, CALL_ESTABLISHED, CALL_CLOSED...) are JSON in netstrings.

Pitfalls of this baresip, each seen here: its SIP stack binds TCP and TLS on ``port`` and
``port + 1``, so two phones and their control ports need distinct pairs; ``ausine`` only runs at
48 kHz stereo (baresip resamples to the codec); the heard file stops growing while the call is
held, and its header is only completed at hang-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import shutil
import struct
from pathlib import Path
from typing import Any

from services.runtime.embedded_etcd import free_port
from tests.harness import ports
from tests.harness.wait import wait_for

MODULES = "/usr/lib/baresip/modules"
# RTP ports: this test process's share (tests/harness/ports.py), a hundred per phone.
_RTP_SHARE = ports.share(18000, 26000)
_rtp_ranges = itertools.cycle(range(_RTP_SHARE.start, _RTP_SHARE.stop - 99, 100))  # reused once phones are gone


def port_pair() -> int:
    """A loopback port ``p`` with ``p`` and ``p + 1`` free for TCP and UDP (baresip takes both)."""
    return free_port(2)


class Baresip:
    """One baresip phone registered as ``number`` at ``registrar`` (``host:port``)."""

    def __init__(
        self,
        folder: Path,
        number: str,
        password: str,
        registrar: str,
        tone_hz: int = 440,
        tls_ca: Path | None = None,
        srtp: bool = False,
    ):
        """With ``tls_ca`` the phone speaks SIP over TLS to ``registrar`` (a listen.sips address)
        and trusts that CA; with ``srtp`` its audio is SRTP only (SDES, RTP/SAVP)."""
        self.tls_ca = tls_ca
        self.srtp = srtp
        path = shutil.which("baresip")
        assert path is not None, "baresip is not installed: `make test` installs it (Debian package baresip)"
        self.binary = path
        self.folder = folder
        self.number, self.password, self.registrar = number, password, registrar
        self.tone_hz = tone_hz
        self.sip_port = port_pair()
        self.control_port = port_pair()
        self.events: list[dict[str, Any]] = []
        self.output: list[str] = []
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._responses: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._changed = asyncio.Event()

    def _write_config(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        rtp = next(_rtp_ranges)
        (self.folder / "config").write_text(
            "\n".join([
                "poll_method epoll",
                f"sip_listen 127.0.0.1:{self.sip_port}",
                "net_interface 127.0.0.1",
                f"rtp_ports {rtp}-{rtp + 99}",
                f"audio_source ausine,{self.tone_hz}",
                "ausrc_srate 48000",
                "ausrc_channels 2",
                "audio_player aubridge,heard",
                "audio_alert aubridge,alert",
                f"module_path {MODULES}",
                "module g711.so",
                "module ausine.so",
                "module aubridge.so",
                "module sndfile.so",
                *(["module srtp.so"] if self.srtp else []),
                "module_app account.so",
                "module_app menu.so",
                "module_app ctrl_tcp.so",
                f"ctrl_tcp_listen 127.0.0.1:{self.control_port}",
                f"snd_path {self.folder}",
                *([f"sip_cafile {self.tls_ca}"] if self.tls_ca is not None else []),
                "",
            ])
        )  # fmt: skip
        (self.folder / "accounts").write_text(
            f"<sip:{self.number}@{self.registrar};transport={'tls' if self.tls_ca else 'udp'}>;"
            f"auth_pass={self.password};answermode=auto;regint=600{';mediaenc=srtp-mand' if self.srtp else ''}\n"
        )

    async def start(self, registered: bool = True, timeout: float = 10.0) -> Baresip:
        """Starts the phone; with ``registered`` waits for its REGISTER's 200 OK."""
        self._write_config()
        self._process = await asyncio.create_subprocess_exec(
            self.binary, "-f", str(self.folder),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=self.folder,
        )  # fmt: skip
        self._tasks.append(asyncio.create_task(self._read_output()))
        try:
            await self._connect_and_register(registered, timeout)
        except BaseException:
            await self.stop()  # a phone that did not start leaves nothing running
            raise
        return self

    async def _connect_and_register(self, registered: bool, timeout: float) -> None:
        assert self._process is not None
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(OSError):
                    self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.control_port)
                    break
                assert self._process.returncode is None, "baresip exited:\n" + "".join(self.output)
                await asyncio.sleep(0.05)
        self._tasks.append(asyncio.create_task(self._read_control()))
        if registered:
            # REGISTER_OK may come before the control connection: ask the phone instead.
            async def registered_now() -> bool:
                return "OK" in (await self.command("reginfo")).get("data", "")

            await wait_for(registered_now, timeout, f"baresip {self.number} registered at {self.registrar}")

    async def _read_output(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for raw in self._process.stdout:
            self.output.append(raw.decode(errors="replace"))
            del self.output[:-400]

    async def _read_control(self) -> None:
        assert self._reader is not None
        while True:
            length = await self._reader.readuntil(b":")
            body = await self._reader.readexactly(int(length[:-1]))
            await self._reader.readexactly(1)  # the netstring's ","
            message = json.loads(body)
            if message.get("event"):
                self.events.append(message)
                self._changed.set()
            elif message.get("response"):
                await self._responses.put(message)

    async def command(self, name: str, params: str = "") -> dict[str, Any]:
        """Runs a menu command (``dial``, ``hold``, ``resume``, ``hangup``...) and returns its answer."""
        assert self._writer is not None, "the phone is not running"
        body = json.dumps({"command": name, "params": params, "token": name}).encode()
        self._writer.write(str(len(body)).encode() + b":" + body + b",")
        await self._writer.drain()
        answer = await asyncio.wait_for(self._responses.get(), 5)
        assert answer.get("ok"), f"baresip {name} {params}: {answer}"
        return answer

    async def event(self, kind: str, timeout: float = 10.0, after: int = 0) -> dict[str, Any]:
        """The first event of ``kind`` at or after index ``after`` of ``events``, waited for."""
        async with asyncio.timeout(timeout):
            while True:
                for message in self.events[after:]:
                    if message.get("type") == kind:
                        return message
                self._changed.clear()
                await self._changed.wait()

    async def dial(self, number: str) -> None:
        await self.command("dial", f"sip:{number}@{self.registrar}")

    def heard(self) -> list[Path]:
        """The WAV files of what the phone heard, one per call, oldest first."""
        return sorted(self.folder.glob("dump-*-dec.wav"))

    async def stop(self) -> None:
        """Asks the phone to quit, then SIGTERM, then SIGKILL (baresip was seen to ignore SIGTERM)."""
        process = self._process
        if process is not None and process.returncode is None and self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.command("quit"), 1)
        if self._writer is not None:
            self._writer.close()
        for task in self._tasks:
            task.cancel()
        for signal_it in ("terminate", "kill"):
            if process is None or process.returncode is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                getattr(process, signal_it)()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 3)

    def log(self) -> str:
        return "".join(self.output[-60:])


def samples(wav: Path) -> list[int]:
    """The 16-bit mono samples of a WAV file, also when its header was never completed."""
    data = wav.read_bytes()
    start = data.find(b"data")
    if start < 0:
        return []
    raw = data[start + 8 :]
    raw = raw[: len(raw) // 2 * 2]
    return list(struct.unpack(f"<{len(raw) // 2}h", raw))


def tone_level(values: list[int], hz: float, rate: int = 8000) -> float:
    """The strength of one frequency in ``values`` (Goertzel), relative to the signal's power:
    near 1 for a pure tone of ``hz``, near 0 for silence or another tone."""
    if not values:
        return 0.0
    coefficient = 2 * math.cos(2 * math.pi * hz / rate)
    previous = before = 0.0
    for value in values:
        previous, before = value + coefficient * previous - before, previous
    power = previous**2 + before**2 - coefficient * previous * before
    energy = sum(v * v for v in values)
    return 2 * power / (len(values) * energy) if energy else 0.0
