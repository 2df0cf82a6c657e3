"""Cuts each call's recording where this server's callstate cuts its segments.

The callstate is where segments are decided: the answer, each transfer, hold and resume begin one,
with the same id and (aligned) times on both servers of a call. This follows the callstate's
WatchCalls stream; for every call the gateway connected on this media service, each new segment
starts a new file at the segment's start time (the recorder ends the previous one at that very
moment), and the call's end closes the last one at the end time. Later alignments of those times
go into the metadata.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from pbxmesh.callstate.v1 import callstate_pb2 as cs
from services.media.recordings import Catalog, Entry

_log = logging.getLogger(__name__)

# A segment the recorder hears of later than this after its start (this service restarted, the
# callstate was away) is recorded from now on: the recorder keeps only this much audio back.
LATE = 2.0
KEEP_ENDED = 120.0  # seconds an ended call's bookkeeping is kept (late alignments of its times)


@dataclasses.dataclass
class Followed:
    started: set[int] = dataclasses.field(default_factory=set)  # segments whose file was begun
    stopped: bool = False
    ended_at: float | None = None


class Segments:
    def __init__(
        self,
        catalog: Catalog,
        record: Callable[[str, str, float], bool],
        stop: Callable[[str, float], None],
        clock: Callable[[], float] = time.time,
    ):
        self.catalog = catalog
        self.record = record  # (call id, segment id, at): begins a file; False if the call is not here
        self.stop = stop  # (call id, at): closes the call's file
        self.clock = clock
        self.calls: dict[str, Followed] = {}

    def seen(self, call: cs.Call) -> None:
        """One message of the callstate's stream."""
        followed = self.calls.get(call.call_id)
        if followed is None:
            if not call.segments:
                return
            followed = self.calls[call.call_id] = Followed()
        now = self.clock()
        for segment in call.segments:
            n = int(segment.segment_id.rsplit("/", 1)[-1]) if "/" in segment.segment_id else 0
            started = segment.started_at.ToMicroseconds() / 1e6
            ended = segment.ended_at.ToMicroseconds() / 1e6 if segment.HasField("ended_at") else None
            fields = {
                "started_at": started,
                "ended_at": ended,
                "held": segment.held,
                "local_number": segment.local_party.number,
                "local_name": segment.local_party.display_name,
                "remote_number": segment.remote_party.number,
                "remote_name": segment.remote_party.display_name,
            }
            if n in followed.started:
                self.catalog.update(segment.segment_id, **fields)
                continue
            if followed.stopped or (ended is not None and ended < now - LATE) or n == 0:
                continue  # over before this service heard of it: nothing of it is left to record
            if self.catalog.path_of(segment.segment_id) is None:
                _log.warning(
                    "call %s: segment id %r cannot name a file; not recorded", call.call_id, segment.segment_id
                )
                continue
            at = max(started, now - LATE)
            if not self.record(call.call_id, segment.segment_id, at):
                self.calls.pop(call.call_id, None)
                return  # no media of this call here (direct media, or another server's call)
            followed.started.add(n)
            self.catalog.begin(Entry(segment.segment_id, call.call_id, n, **fields))  # type: ignore[arg-type]
        if call.phase == cs.CALL_PHASE_ENDED and not followed.stopped:
            followed.stopped = True
            followed.ended_at = call.ended_at.ToMicroseconds() / 1e6 if call.HasField("ended_at") else now
            if followed.started:
                self.stop(call.call_id, followed.ended_at)

    def expire(self) -> None:
        """Forgets calls that ended a while ago."""
        cutoff = self.clock() - KEEP_ENDED
        for call_id in [c for c, f in self.calls.items() if f.ended_at is not None and f.ended_at < cutoff]:
            del self.calls[call_id]
