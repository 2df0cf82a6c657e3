"""One server's calls as its callstate knows them: what its gateway reports, merged with what the
callstate of the other server of a cross-server call shares.

Pure: no I/O, no clock of its own (every change carries its time), so that the rules below are unit
tested directly.

Segments. A call is cut into segments, one per stretch of a pair of connected parties: the first
begins at the answer, and each transfer, hold and resume (on either side) ends one and begins the
next; a stretch on hold is flagged held (its recording holds what the held party heard). Both servers of a
cross-server call must cut at the same moments with the same ids: ids are ``<call id>/<n>``, and a
boundary is the earlier of the two servers' observations of it (the server where a change happens
sees it first and shares its time; the other adopts it). So both timelines end up identical.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

DIALING, RINGING, ANSWERED, HELD, ENDED = "dialing", "ringing", "answered", "held", "ended"
MAX_STRANGERS = 8  # servers
MAX_STRANGER_SHARES = 4  # per server: answer, hold, transfer... before this server knew


@dataclasses.dataclass(frozen=True)
class Party:
    number: str = ""
    display_name: str = ""
    department: str = ""
    server_id: str = ""
    server_name: str = ""
    # In the outside world: a PSTN number reached through a provider of a router server.
    external: bool = False
    provider: str = ""
    router_server_id: str = ""

    def merged(self, other: Party) -> Party:
        """``other`` where it says more (the same number, with more details)."""
        if other.number and other.number != self.number:
            return other
        return Party(
            self.number or other.number,
            other.display_name or self.display_name,
            other.department or self.department,
            other.server_id or self.server_id,
            other.server_name or self.server_name,
            other.external or self.external,
            other.provider or self.provider,
            other.router_server_id or self.router_server_id,
        )


@dataclasses.dataclass
class Segment:
    n: int
    started_at: float
    local: Party
    remote: Party
    server_ids: tuple[str, ...]
    ended_at: float | None = None
    held: bool = False


@dataclasses.dataclass
class CallRecord:
    call_id: str
    local: Party
    remote: Party
    phase: str = DIALING
    outgoing: bool = True
    peer_server_id: str = ""  # empty for a call between this server's own phones
    # A transfer here sent this server's side to a phone on another server: the call now passes
    # through this one, and what that server tells of its phone is passed on to the peer.
    far_server_id: str = ""
    # What another server said before this server knew it was in the call, in order: the server
    # behind a transfer, or the called server itself (an outgoing trunk call learns its peer at
    # the answer, and the peer's callstate can be quicker than this server's own gateway).
    strangers: dict[str, list[Share]] = dataclasses.field(default_factory=dict)
    held_by: str = ""  # "local" or "remote" while held
    held_changed_at: float = 0.0  # when the last hold or resume happened: older news is ignored
    started_at: float = 0.0
    answered_at: float | None = None
    ended_at: float | None = None
    end_reason: str = ""
    path: tuple[str, ...] = ()
    segments: list[Segment] = dataclasses.field(default_factory=list)
    # Segment starts the other server told of before this one's gateway got there.
    early_starts: dict[int, float] = dataclasses.field(default_factory=dict)
    # Transfers the other server told of before this one's gateway reported the answer.
    early_shares: list[Share] = dataclasses.field(default_factory=list)
    # Whether this server's gateway has reported the call (a record can begin with a share).
    reported: bool = False
    # The call was rerouted to this peer (a server in the middle handed it over): the peer's first
    # word may carry the call's segment numbering, which this server, brought in by a transfer
    # elsewhere, did not know.
    renumber_from: str = ""
    # The peer ended its part (time, reason) before this server's gateway reported an end: the
    # gateway's own end follows (the BYE crosses the trunk) unless the call left that peer
    # meanwhile (a loop collapsed here, a transfer), in which case it is no end of this call.
    peer_end: tuple[float, str] | None = None

    @property
    def cross_server(self) -> bool:
        return bool(self.peer_server_id)

    @property
    def segment_count(self) -> int:
        """The number of the current segment (a server brought in late starts past 1)."""
        return self.segments[-1].n if self.segments else 0

    def segment(self, n: int) -> Segment | None:
        return next((s for s in self.segments if s.n == n), None)

    def servers(self) -> tuple[str, ...]:
        return tuple(s for s in (self.local.server_id, self.peer_server_id) if s)


@dataclasses.dataclass(frozen=True)
class Event:
    """One change of one call, as the gateway reports it."""

    call_id: str
    kind: str  # created, ringing, answered, held, resumed, transferred, ended
    at: float
    local: Party = Party()
    remote: Party = Party()
    peer_server_id: str = ""
    outgoing: bool = True
    by: str = ""
    reason: str = ""
    path: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Share:
    """What one server's callstate tells the other's about a shared call."""

    call_id: str
    server_id: str
    party: Party
    phase: str
    at: float
    segment: int
    held_by: str = ""  # from the sender's point of view
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a change means beyond the record itself."""

    share: Share | None = None  # to send to the other server
    new_party: Party | None = None  # to tell this server's phone (its remote party changed)


class CallBook:
    def __init__(self, server_id: str, server_name: str):
        self.server_id = server_id
        self.server_name = server_name
        self.calls: dict[str, CallRecord] = {}
        # Told of every record that changed (the API's WatchCalls listens here).
        self.listeners: set[Callable[[CallRecord], None]] = set()

    # -- what the gateway reports ---------------------------------------------------------------

    def apply(self, event: Event) -> Outcome:
        call = self.calls.get(event.call_id)
        local = self._own(event.local)
        missed = False
        if call is None:
            call = CallRecord(
                event.call_id,
                local,
                event.remote,
                outgoing=event.outgoing,
                peer_server_id=event.peer_server_id,
                started_at=event.at,
                path=event.path,
            )
            self.calls[call.call_id] = call
        elif call.phase == ENDED:
            return Outcome()
        else:
            if event.kind in ("transferred", "rerouted") and event.peer_server_id != call.peer_server_id:
                call.peer_end = None  # the peer that ended is no longer in this call
            if event.kind == "transferred" and _same_pair(call, local, event.remote):
                # The parties this record has already: the news of that transfer came first from
                # the peer (a loop closed here, a hand-over). The same pair by a shorter way.
                event = dataclasses.replace(event, kind="rerouted")
            if event.kind == "rerouted" and event.remote.number not in ("", call.remote.number):
                # Rerouted to another party: the transfer behind it was never told here (its
                # server stepped out first). It is a commutation of this call all the same.
                event = dataclasses.replace(event, kind="transferred")
                missed = True
            if event.kind == "rerouted":
                call.renumber_from = event.peer_server_id
            if event.kind == "transferred":
                call.local, call.remote = local, event.remote
            else:
                # Details of the same parties only: after a transfer on the other server this
                # server's gateway still names the party it first called.
                call.local = _same_party(call.local, local)
                call.remote = _same_party(call.remote, event.remote)
            # A transfer may bring the call home (its other party now on this server, no peer).
            moved = event.kind in ("transferred", "rerouted")
            call.peer_server_id = event.peer_server_id if moved else call.peer_server_id or event.peer_server_id
            call.path = event.path or call.path
        call.far_server_id = local.server_id if local.server_id != self.server_id else ""
        told = call.strangers.pop(call.far_server_id, None) if call.far_server_id else None
        if told and told[-1].party.number == call.local.number:
            call.local = call.local.merged(told[-1].party)
        call.reported = True
        share = self._step(call, event)
        self._changed(call)
        new_party = call.remote if missed and call.phase in (ANSWERED, HELD) else None
        # The peer spoke before this server's gateway named it: what it said counts now.
        for waiting in call.strangers.pop(call.peer_server_id, []) if call.peer_server_id else []:
            new_party = self.shared(waiting).new_party or new_party
        if call.phase == ANSWERED and call.early_shares:
            early, call.early_shares = call.early_shares, []
            for waiting in early:
                new_party = self.shared(waiting).new_party or new_party
        return Outcome(share=share, new_party=new_party)

    def _step(self, call: CallRecord, event: Event) -> Share | None:
        kind = event.kind
        if kind == "ringing" and call.phase == DIALING:
            call.phase = RINGING
        elif kind == "answered" and call.phase in (DIALING, RINGING):
            call.phase = ANSWERED
            call.answered_at = event.at
            if not call.segments:
                self._begin_segment(call, event.at)
            return self._share(call, event.at)
        elif kind in ("held", "resumed") and call.phase in (ANSWERED, HELD):
            # A commutation unless the other server told of it first (the call is there already):
            # then this server's time still counts when it is the earlier one (a report can reach
            # the callstate after the peer's share of a later observation), and is shared so that
            # the peer takes it too.
            cut = (kind == "held") == (call.phase == ANSWERED)
            call.phase = HELD if kind == "held" else ANSWERED
            call.held_by = event.by if kind == "held" else ""
            call.held_changed_at = event.at
            if cut:
                self._begin_segment(call, event.at)
            else:
                self._align_start(call, call.segment_count, event.at)
            return self._share(call, event.at)
        elif kind == "transferred" and call.phase in (ANSWERED, HELD):
            # A new pair of parties talks: whatever hold there was is the old pair's.
            call.phase, call.held_by = ANSWERED, ""
            self._begin_segment(call, event.at)
            return self._share(call, event.at)
        elif kind == "rerouted" and call.phase in (ANSWERED, HELD):
            # The same parties through another server: no new segment; the new peer learns this
            # server's party and segment (and answers with its own).
            for segment in call.segments:
                if segment.ended_at is None:
                    segment.local, segment.remote = call.local, call.remote
            return self._share(call, call.segments[-1].started_at if call.segments else event.at)
        elif kind == "ended":
            at = min(event.at, call.peer_end[0]) if call.peer_end else event.at
            self._end(call, at, event.reason)
            return self._share(call, at, event.reason)
        return None

    # -- what the other server shares -----------------------------------------------------------

    def shared(self, share: Share) -> Outcome:
        """Applies what the other server said; ``new_party`` is set when this server's phone must
        be told of a new party (the other side transferred)."""
        call = self.calls.get(share.call_id)
        if call is not None and call.far_server_id and share.server_id == call.far_server_id:
            return self._pass_on(call, share)
        if call is not None and call.peer_server_id != share.server_id:
            said = call.strangers.get(share.server_id)
            if said is None and len(call.strangers) < MAX_STRANGERS:
                said = call.strangers[share.server_id] = []
            if said is not None:
                said.append(share)
                del said[:-MAX_STRANGER_SHARES]
            return Outcome()  # not (or no longer: a loop came home) the other server of this call
        if call is None:
            # The other server was quicker than this server's gateway: keep what it said.
            first = share.party if share.segment <= 1 else Party()
            call = CallRecord(share.call_id, Party(server_id=self.server_id), first, started_at=share.at)
            call.peer_server_id = share.server_id
            self.calls[call.call_id] = call
        if call.phase in (DIALING, RINGING) and share.phase != ENDED and share.segment > 1:
            call.early_shares.append(share)  # a transfer there before the answer here: after it
            return Outcome()
        new_party = None
        changed_number = bool(call.remote.number) and share.party.number not in ("", call.remote.number)
        if call.renumber_from == share.server_id and share.phase != ENDED:
            call.renumber_from = ""
            if share.segment > call.segment_count and not changed_number and call.segments:
                # This server joined late: its open segment is the peer's, under the peer's number.
                call.segments[-1].n, call.segments[-1].started_at = share.segment, share.at
        call.remote = call.remote.merged(share.party)
        call.peer_server_id = call.peer_server_id or share.server_id
        if share.phase == ENDED:
            reason = share.reason or "the other server ended the call"
            if call.phase == ENDED:
                self._align_end(call, share.at)
            elif call.reported:
                call.peer_end = (share.at, reason)
            else:
                self._end(call, share.at, reason)
        elif call.phase != ENDED:
            began = False
            if share.segment > call.segment_count and call.phase in (ANSWERED, HELD):
                self._begin_segment(call, share.at)  # the other side transferred, held or resumed
                began = True
                if changed_number:
                    new_party = call.remote
            elif share.segment > call.segment_count:
                call.early_starts[share.segment] = share.at
            elif share.segment >= 1:
                self._align_start(call, share.segment, share.at)
            if share.at >= call.held_changed_at:
                if share.phase == HELD and call.phase in (ANSWERED, HELD):
                    # The sender's "local" is this server's "remote".
                    call.phase, call.held_by = HELD, "local" if share.held_by == "remote" else "remote"
                    call.held_changed_at = share.at
                elif share.phase == ANSWERED and call.phase == HELD:
                    call.phase, call.held_by = ANSWERED, ""
                    call.held_changed_at = share.at
            if began:
                call.segments[-1].held = call.phase == HELD
            for segment in call.segments:
                segment.remote = call.remote if segment.ended_at is None else segment.remote
        self._changed(call)
        return Outcome(new_party=new_party)

    def _pass_on(self, call: CallRecord, share: Share) -> Outcome:
        """The server behind this one told of its phone: keep its details and pass them on."""
        if share.party.number != call.local.number or call.phase == ENDED:
            return Outcome()
        call.local = call.local.merged(share.party)
        for segment in call.segments:
            if segment.ended_at is None:
                segment.local = call.local
        self._changed(call)
        at = call.segments[-1].started_at if call.segments else share.at
        return Outcome(share=Share(call.call_id, self.server_id, call.local, call.phase, at, call.segment_count))

    def answer_for(self, call_id: str, server_id: str) -> Party:
        """The party to answer a share with: this server's, or for the server behind it the one
        on the other end (this server is only passing the call through)."""
        call = self.calls.get(call_id)
        if call is None:
            return Party()
        return call.remote if call.far_server_id and server_id == call.far_server_id else call.local

    def learned(self, call_id: str, party: Party) -> None:
        """The other server's answer to a share: its party, merged into what this server knows."""
        call = self.calls.get(call_id)
        # Details of the party this server knows of only: a new party (a transfer there that
        # overtook this answer) comes with its own share, which cuts the segment.
        if call is None or not party.number or party.number != call.remote.number:
            return
        call.remote = call.remote.merged(party)
        for segment in call.segments:
            if segment.ended_at is None:
                segment.remote = call.remote
        self._changed(call)

    def local_share(self, call_id: str) -> Share | None:
        """What this server would tell the other one now (the answer to its ShareParty)."""
        call = self.calls.get(call_id)
        if call is None:
            return None
        at = call.segments[-1].started_at if call.segments else call.started_at
        return self._share(call, at)

    # -- segments ---------------------------------------------------------------------------------

    def _begin_segment(self, call: CallRecord, at: float) -> None:
        n = call.segment_count + 1
        at = min(at, call.early_starts.pop(n, at))
        if not call.segments and call.answered_at is not None:
            call.answered_at = at
        if call.segments and call.segments[-1].ended_at is None:
            call.segments[-1].ended_at = at
        call.segments.append(Segment(n, at, call.local, call.remote, call.servers(), held=call.phase == HELD))

    def _align_start(self, call: CallRecord, n: int, at: float) -> None:
        """Segment ``n`` began at the earlier of the two servers' times; so did the end of ``n-1``."""
        segment = call.segment(n)
        if segment is None:
            return
        if at < segment.started_at:
            segment.started_at = at
            if segment is call.segments[0]:
                call.answered_at = at
            previous = call.segment(n - 1)
            if previous is not None:
                previous.ended_at = at

    def _end(self, call: CallRecord, at: float, reason: str) -> None:
        call.phase = ENDED
        call.held_by = ""
        call.ended_at = at
        call.end_reason = reason
        if call.segments and call.segments[-1].ended_at is None:
            call.segments[-1].ended_at = at

    def _align_end(self, call: CallRecord, at: float) -> None:
        if call.ended_at is not None and at < call.ended_at:
            call.ended_at = at
            if call.segments and call.segments[-1].ended_at is not None:
                call.segments[-1].ended_at = max(at, call.segments[-1].started_at)

    def _share(self, call: CallRecord, at: float, reason: str = "") -> Share | None:
        if not call.cross_server:
            return None
        held_by = {"local": "local", "remote": "remote"}.get(call.held_by, "")
        return Share(call.call_id, self.server_id, call.local, call.phase, at, call.segment_count, held_by, reason)

    def _own(self, party: Party) -> Party:
        """This server's party, named as this server. A transfer can make it a phone on another
        server (a call through this one): that one keeps its own server."""
        if party.server_id and party.server_id != self.server_id:
            return party
        return dataclasses.replace(party, server_id=self.server_id, server_name=self.server_name)

    def _changed(self, call: CallRecord) -> None:
        for listener in list(self.listeners):
            listener(call)

    def forget(self, call_id: str) -> None:
        self.calls.pop(call_id, None)

    def active(self) -> list[CallRecord]:
        return [call for call in self.calls.values() if call.phase != ENDED]

    def with_peer(self, server_id: str) -> list[CallRecord]:
        return [call for call in self.active() if call.peer_server_id == server_id]


def _same_party(known: Party, reported: Party) -> Party:
    return known.merged(reported) if reported.number in ("", known.number) or not known.number else known


def _same_pair(call: CallRecord, local: Party, remote: Party) -> bool:
    return bool(remote.number) and (local.number, remote.number) == (call.local.number, call.remote.number)
