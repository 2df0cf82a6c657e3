"""One server's media service: its gRPC API at ``listen.media``, its relay workers on
``media.rtp_ports``, and its recordings under ``recording.dir``, cut where the server's callstate
(``listen.callstate``) cuts the calls' segments."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from pbxmesh.callstate.v1 import callstate_pb2 as cs
from pbxmesh.callstate.v1 import callstate_pb2_grpc as cs_grpc
from services.media.plane import Event, LegFreed, Plane, RecordingClosed, RecordingFailed
from services.media.recordings import Catalog
from services.media.segments import Segments
from services.media.service import ASSETS, MediaService
from services.runtime.config import Config, ConfigError
from services.runtime.config_media import port_range
from services.runtime.follow import follow
from services.runtime.grpc_server import count_refusals, service_host
from services.runtime.metrics import Metrics

_log = logging.getLogger(__name__)

DRAIN_SECONDS = 2.0
SWEEP_EVERY = 3600.0  # seconds between two passes of the retention
MUSIC_ON_HOLD = ASSETS / "hold.wav"


class MediaApp:
    def __init__(self, config: Config):
        if not config.listen.media:
            raise ConfigError("listen.media: required to run the media service")
        self.config = config
        self.host = service_host(config, config.listen.media, probe=config.probes.media)
        self.music = Path(config.media.music_on_hold) if config.media.music_on_hold else MUSIC_ON_HOLD
        self.catalog = Catalog(Path(config.recording.dir))
        self.plane: Plane | None = None
        self.service: MediaService | None = None
        self.segments: Segments | None = None
        self.failed = asyncio.Event()
        self.recording_errors = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._finishing: set[asyncio.Task[None]] = set()  # recordings' metadata being completed
        self.metrics = Metrics("media", config.server.id, config.telemetry.metrics.media)
        count_refusals(self.host, self.metrics)

    async def start(self) -> None:
        recording = self.config.recording
        if recording.enabled:
            try:
                self.catalog.check_writable()
            except OSError as exc:
                raise ConfigError(f"recording.dir: cannot write to {recording.dir!r} ({exc.strerror})") from None
            await asyncio.to_thread(self.catalog.load)
        media = self.config.media
        try:
            self.plane = await Plane.start(
                address=media.rtp_address,
                ports=port_range(media.rtp_ports),
                workers=media.workers,
                music_on_hold=self.music,
                on_event=self._event,
            )
        except ValueError as exc:  # a music file the player cannot read
            raise ConfigError(f"media.music_on_hold: {exc}") from None
        self.service = MediaService(self.plane, self.catalog, self.music)
        self.host.add(self.service)
        self._measure(self.plane, self.service)
        await self.host.start()
        if recording.enabled:
            self.segments = Segments(self.catalog, self._record, self.plane.stop_recording)
            self._tasks.append(asyncio.ensure_future(self._follow_segments()))
            self._tasks.append(asyncio.ensure_future(self._sweep()))
        _log.info(
            "media service of %s listening on %s, RTP on %s ports %s, %d worker(s), recording %s",
            self.config.server.id,
            self.host.address,
            media.rtp_address,
            media.rtp_ports,
            media.workers,
            f"to {recording.dir}" if recording.enabled else "off",
        )

    def _record(self, call_id: str, segment_id: str, at: float) -> bool:
        assert self.plane is not None and self.service is not None
        if call_id not in self.service.calls:
            return False
        path = self.catalog.path_of(segment_id)
        assert path is not None
        self.plane.record(call_id, segment_id, path, at)
        return True

    def _event(self, event: Event) -> None:
        if isinstance(event, RecordingFailed):
            self.recording_errors += 1
            _log.error("recording of %s stopped: %s", event.segment_id, event.error)
        elif isinstance(event, RecordingClosed):
            if event.error:
                _log.warning("recording of %s ended early: %s", event.segment_id, event.error)
            # Its digest reads the whole file: not on the loop that answers the gateway.
            done = asyncio.ensure_future(self._finish(event.segment_id, event.error))
            self._finishing.add(done)
            done.add_done_callback(self._finishing.discard)
        elif isinstance(event, LegFreed) and event.why == "worker exited" and not self.failed.is_set():
            _log.error("a media worker ended: the media service stops (its gateway moves calls to direct media)")
            self.failed.set()
        if self.service is not None:
            self.service.on_event(event)

    async def _finish(self, segment_id: str, error: str) -> None:
        await asyncio.to_thread(self.catalog.finish, segment_id, error)

    async def _follow_segments(self) -> None:
        if not self.config.listen.callstate:
            _log.warning("listen.callstate is not set: calls are relayed but not recorded")
            return
        segments = self.segments
        assert segments is not None

        def on_message(message: cs.WatchCallsResponse) -> None:
            for call in message.calls:
                segments.seen(call)
            segments.expire()

        await follow(
            "the callstate's watch",
            self.config.listen.callstate,
            lambda channel: cs_grpc.CallStateServiceStub(channel).WatchCalls(cs.WatchCallsRequest()),
            on_message,
        )

    async def _sweep(self) -> None:
        while True:
            removed = await asyncio.to_thread(self.catalog.sweep, self.config.recording.retention_days)
            if removed:
                _log.info("deleted %d recording(s) older than %d days", removed, self.config.recording.retention_days)
            await asyncio.sleep(SWEEP_EVERY)

    def _measure(self, plane: Plane, service: MediaService) -> None:
        def counter(name: str) -> list[tuple[float, dict[str, str]]]:
            return [(plane.counters().get(name, 0), {})]

        self.metrics.gauge("pbxmesh.media.legs", "legs open", lambda: counter("legs"))
        self.metrics.gauge("pbxmesh.media.gateways", "gateways attached", lambda: [(len(service.owners), {})])
        self.metrics.counter_of(
            "pbxmesh.media.packets_relayed", "RTP packets relayed", lambda: counter("packets_relayed")
        )
        self.metrics.counter_of(
            "pbxmesh.media.packets_dropped",
            "packets from an address a leg's SDP did not name: neither relayed nor recorded",
            lambda: counter("packets_dropped"),
        )
        self.metrics.counter_of(
            "pbxmesh.media.recording_errors",
            "recordings stopped by an error (disk full, unwritable)",
            lambda: [(self.recording_errors, {})],
        )

    async def stop(self, graceful: bool) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.host.stop(DRAIN_SECONDS if graceful else 0)
        if self.plane is not None:
            await self.plane.stop()  # closes the recordings still open
            await asyncio.sleep(0)
        if self._finishing:
            await asyncio.wait(self._finishing)
