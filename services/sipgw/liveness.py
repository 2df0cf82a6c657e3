"""A call whose other end vanished does not live on: dead or restarted peers, and session timers.

Peers. Every ``interval`` seconds the gateway sends an OPTIONS over the trunk to each address its
trunk legs lead to. The answer names the peer gateway's process (``X-Pbxmesh-Instance``): a leg
set up with another instance belongs to a process that is gone (it restarted and forgot its
calls), and a peer that has answered nothing for ``dead_after`` seconds is dead. Either way the
calls through it end: the other party gets BYE with a Reason (RFC 3326), the trunk lines are
freed, and callstate learns the reason. Any answer counts as alive (a 403 too: the process is up).

Session timers (RFC 4028). Each answered leg is refreshed every ``session_expires / 2`` seconds by
the gateway itself (it is the refresher on both sides of every call): an UPDATE where the party
takes UPDATE, else a re-INVITE with the SDP it has (nothing changes). A refresh that is refused
with 481/408 or never answered means that party is gone: the call ends as above. Refreshes the
parties send themselves are relayed as any re-INVITE or UPDATE and count as refreshed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

from services.runtime.logs import call_log
from services.sipgw.call import Call, Leg, Phase, Side
from services.sipgw.calls import CallTable
from services.sipgw.sip import Request, Response, parse_uri
from services.sipgw.sip.dialog import new_tag
from services.sipgw.sip.headers import Headers
from services.sipgw.sip.transaction import new_branch
from services.sipgw.sip.transport import Address
from services.sipgw.trunk import INSTANCE, Trunk

_log = logging.getLogger(__name__)

PING_INTERVAL = 2.0  # seconds between OPTIONS to each peer with calls
DEAD_AFTER = 6.0  # seconds a peer may answer nothing before its calls end
GONE_STATUSES = (404, 408, 481)  # answers to a refresh that say the dialog is no more


@dataclasses.dataclass
class _Peer:
    last_answer: float
    pings: int = 0  # sent since the last answer


class PeerMonitor:
    def __init__(
        self,
        table: CallTable,
        trunk: Trunk,
        interval: float = PING_INTERVAL,
        dead_after: float = DEAD_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.table, self.trunk = table, trunk
        self.interval, self.dead_after, self.clock = interval, dead_after, clock
        self._peers: dict[Address, _Peer] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="trunk-peers")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()

    def legs(self) -> dict[Address, list[tuple[Call, Side, Leg]]]:
        """The answered calls' trunk legs, by the address they lead to."""
        found: dict[Address, list[tuple[Call, Side, Leg]]] = {}
        for call in self.table.active():
            if call.phase != Phase.ANSWERED:
                continue
            for side, leg in call.legs.items():
                if leg.trunk and leg.dialog is not None:
                    found.setdefault(leg.address, []).append((call, side, leg))
        return found

    def check(self) -> None:
        """One round: ends the calls of peers that died, pings the others."""
        now, legs = self.clock(), self.legs()
        for address in [a for a in self._peers if a not in legs]:
            del self._peers[address]  # no call through it any more
        for address, through in legs.items():
            peer = self._peers.setdefault(address, _Peer(now))
            if now - peer.last_answer > self.dead_after and peer.pings >= 2:
                server = through[0][2].server or f"{address[0]}:{address[1]}"
                self._end(through, f"server {server} does not answer", gone=True)
                del self._peers[address]
                continue
            peer.pings += 1
            self._ping(address)

    def _ping(self, address: Address) -> None:
        endpoint = self.trunk.endpoint
        if endpoint is None:
            return
        local = f"{endpoint.local[0]}:{endpoint.local[1]}"
        headers = Headers()
        headers.add("Via", f"SIP/2.0/{endpoint.name} {local};branch={new_branch()};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<sip:{self.trunk.server_id}@{local}>;tag={new_tag()}")
        headers.add("To", f"<sip:ping@{address[0]}:{address[1]}>")
        headers.add("Call-ID", f"{new_tag()}@{local}")
        headers.add("CSeq", "1 OPTIONS")
        headers.add("X-Pbxmesh-Origin", self.trunk.server_id)
        request = Request("OPTIONS", parse_uri(f"sip:ping@{address[0]}:{address[1]}"), headers)
        self.table.transactions.send_request(
            request, endpoint, address, lambda response: self._answered(address, response), lambda: None
        )

    def _answered(self, address: Address, response: Response) -> None:
        peer = self._peers.get(address)
        if peer is not None:
            peer.last_answer, peer.pings = self.clock(), 0
        instance = response.headers.get(INSTANCE)
        if not instance:
            return
        stale = [(c, s, leg) for c, s, leg in self.legs().get(address, []) if leg.peer_instance not in ("", instance)]
        if stale:
            server = stale[0][2].server or f"{address[0]}:{address[1]}"
            self._end(stale, f"server {server} restarted and lost the call", gone=False)

    def _end(self, through: list[tuple[Call, Side, Leg]], reason: str, gone: bool) -> None:
        for call, side, _leg in through:
            if call.phase == Phase.ENDED:
                continue
            call_log(_log, call.id).info("%s: ending it", reason)
            # A dead peer would not answer a BYE; a restarted one answers 481, which is fine.
            self.table.hang_up(call, reason, 503, gone=side if gone else None)


class SessionTimer:
    """Refreshes every answered leg every ``session_expires / 2`` seconds (RFC 4028)."""

    def __init__(self, table: CallTable, session_expires: float, clock: Callable[[], float] = time.monotonic):
        self.table, self.session_expires, self.clock = table, session_expires, clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="session-timers")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.session_expires / 8))
            self.check()

    def check(self) -> None:
        now = self.clock()
        for call in self.table.active():
            if call.phase != Phase.ANSWERED or call.transfer is not None or call.handover is not None:
                continue
            for side, leg in list(call.legs.items()):
                if leg.dialog is not None and now - leg.refreshed_at >= self.session_expires / 2:
                    leg.refreshed_at = now
                    self._refresh(call, side, leg)

    def _refresh(self, call: Call, side: Side, leg: Leg) -> None:
        if leg.allows_update:
            request = self.table.request(leg, "UPDATE")
        else:
            request = self.table.request(leg, "INVITE", leg.sdp, "application/sdp")
        request.headers.add("Session-Expires", f"{int(self.session_expires)};refresher=uac")
        request.headers.add("Supported", "timer")

        def answered(response: Response) -> None:
            if response.status < 200:
                return
            if request.method == "INVITE" and response.status < 300:
                self.table.ack(leg, request.cseq.number)
            if response.status in GONE_STATUSES:
                self._gone(call, side, f"{response.status} {response.reason}")

        self.table.send(leg, request, answered, lambda: self._gone(call, side, "no answer"))

    def _gone(self, call: Call, side: Side, why: str) -> None:
        if call.phase == Phase.ENDED or side not in call.legs:
            return
        reason = f"the session timer found the {side} gone ({why})"
        call_log(_log, call.id).info("%s", reason)
        self.table.hang_up(call, reason, 408, gone=side)
