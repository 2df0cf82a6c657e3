"""pbxmesh's media plane (``services.media.plane``) behind the same face as the rtpengine relay.

The plane is imported by name at run time: where the module is missing the bench still runs
rtpengine and reports the plane as not available. Everything the bench needs from the plane's API
is in this file.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import time
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PCMU = [(0, "PCMU", 8000)]
COUNTERS_PERIOD = 1.1  # the workers report their counters every second
COUNTER_REPORTS = 6
CHECKOUT = Path(__file__).resolve().parent.parent


def plane_class() -> tuple[Any, str]:
    """(the Plane class, "") or (None, why it is not available)."""
    try:
        module = importlib.import_module("services.media.plane")
    except ImportError as error:
        return None, f"plane not available: services.media.plane does not import here ({error})"
    where = Path(module.__file__ or "").resolve()
    if not where.is_relative_to(CHECKOUT):
        # The virtualenv's editable install can resolve a package missing here to another checkout.
        return None, f"plane not available: services.media.plane is not in this checkout (found {where})"
    plane = getattr(module, "Plane", None)
    if plane is None:
        return None, "plane not available: services.media.plane has no Plane"
    return plane, ""


def _silence_wav(path: Path) -> Path:
    """One second of 8 kHz 16-bit mono silence (the plane wants a music-on-hold file)."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0\0" * 8000)
    return path


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


class PlaneRelay:
    """One plane with one worker; ``open_calls`` connects two legs per call, recording if asked."""

    label = "pbxmesh"

    def __init__(self, plane: Any, directory: Path, pids: list[int], counter_reports: int) -> None:
        self.plane = plane
        self.counter_reports = counter_reports
        self.directory = directory
        self._pids = pids
        self.recording: list[str] = []

    @classmethod
    async def start(
        cls, directory: Path, *, ports: tuple[int, int], counter_reports: int = COUNTER_REPORTS
    ) -> PlaneRelay:
        """A plane with one worker; ``counter_reports``: how many counter reports ``relayed`` may wait for."""
        plane_type, why = plane_class()
        if plane_type is None:
            raise RuntimeError(why)
        before = set(_children(os.getpid()))
        plane = await plane_type.start(
            address="127.0.0.1",
            ports=ports,
            workers=1,
            music_on_hold=_silence_wav(directory / "hold.wav"),
            on_event=lambda event: None,
        )
        # The workers' PIDs: ``plane.pids`` if the plane names them, else its workers' processes,
        # else the processes it started (our new children).
        pids = list(
            getattr(plane, "pids", None)
            or [worker.process.pid for worker in getattr(plane, "workers", [])]
            or sorted(set(_children(os.getpid())) - before)
        )
        if not pids:
            await plane.stop()
            raise RuntimeError("the plane started no worker process the bench can see (plane.pids)")
        return cls(plane, directory, pids, counter_reports)

    @property
    def pids(self) -> list[int]:
        return self._pids

    async def open_calls(self, sides: Sequence[tuple[int, int]], *, record: bool) -> list[tuple[str, int]]:
        destinations: list[tuple[str, int]] = []
        for i, (port_a, port_b) in enumerate(sides):
            leg_a, leg_b = await self.plane.open_legs(2, owner="bench")
            self.plane.set_remote(leg_a.leg_id, "127.0.0.1", port_a, port_a + 1, PCMU, "sendrecv")
            self.plane.set_remote(leg_b.leg_id, "127.0.0.1", port_b, port_b + 1, PCMU, "sendrecv")
            call_id = f"bench-{i}"
            self.plane.connect(call_id, leg_a.leg_id, leg_b.leg_id)
            if record:
                self.plane.record(call_id, f"{call_id}-1", self.directory / f"{call_id}.wav", at=time.time())
                self.recording.append(call_id)
            destinations += [(leg_a.address, leg_a.rtp_port), (leg_b.address, leg_b.rtp_port)]
        await self.plane.settled()  # every call's remotes are applied before the load starts
        return destinations

    async def relayed(self) -> int | None:
        """The packets the worker relayed since it started, once its counters (reported every second)
        stop moving: a worker that fell behind still has packets queued when the load ends."""
        last: int | None = None
        for _ in range(self.counter_reports):
            await asyncio.sleep(COUNTERS_PERIOD)
            value = self.plane.counters().get("packets_relayed")
            if value is None or value == last:
                break
            last = int(value)
        return last

    async def close(self) -> str:
        for call_id in self.recording:
            self.plane.stop_recording(call_id, at=time.time())
        self.recording.clear()
        await self.plane.stop()
        return "stopped"

    def recordings(self) -> list[Path]:
        return sorted(self.directory.glob("bench-*"))
