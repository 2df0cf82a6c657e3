"""Parallel forking of one call leg: the same INVITE to every place a party can be reached.

A number with several registered phones, or a department, is rung everywhere at once
(RFC 3261 16.7). The first branch to answer wins and the others are canceled; a 2xx that still
arrives from a canceled branch (its answer crossed our CANCEL) is ACKed and hung up at once.
When every branch has failed, the best failure is reported: a 6xx at once, else the lowest class,
the first received within it.

A branch may carry a ``retry``: asked on its failure (a challenge to answer with credentials, a
provider or router server that refuses or does not answer), it may turn the branch into a new
INVITE, sent at once in its place, instead of letting it fail (the branch's owner does the RFC
3261 22.2 and failover logic; the fork only resends).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable

from services.sipgw.sip import Request, Response
from services.sipgw.sip.dialog import Dialog
from services.sipgw.sip.headers import Headers
from services.sipgw.sip.transaction import ClientTransaction, TransactionLayer
from services.sipgw.sip.transport import Address, Link, sent_by


@dataclasses.dataclass
class Branch:
    """One INVITE of a forked leg."""

    request: Request
    address: Address
    link: Link
    over_trunk: bool = False
    peer_server_id: str = ""  # the server a trunk branch goes to, when the plan says
    # Called once when the branch ends without winning (a trunk line goes back here).
    release: Callable[[], None] | None = None
    tx: ClientTransaction | None = None
    final: int = 0  # the final status it got, 0 while it rings
    cancel_waits: bool = False  # canceled before any provisional answer: CANCEL goes on the first
    # Asked with the failure status and response (None: no answer) before the branch fails: True
    # when it has put a new request (and address, link, release) in the branch, to send instead.
    retry: Callable[[Branch, int, Response | None], bool] | None = None
    provider: str = ""  # the provider a branch to the outside goes to
    codecs: tuple[str, ...] = ()  # the provider's codecs: the offer it gets is limited to them
    offer: bytes = b""  # the offer before that limit (another route may take other codecs)
    line: Callable[[], None] | None = None  # with a retry: the line of the route tried now

    def released(self) -> None:
        release, self.release = self.release, None
        if release is not None:
            release()


class Fork:
    """Rings every branch; tells its owner of ringing, of the answer, or of the best failure."""

    def __init__(
        self,
        transactions: TransactionLayer,
        branches: list[Branch],
        on_provisional: Callable[[Branch, Response], None],
        on_answer: Callable[[Branch, Response], None],
        on_failure: Callable[[int, str], None],
        ring_timeout: float | None = None,
    ):
        self.transactions = transactions
        self.branches = branches
        self.on_provisional = on_provisional
        self.on_answer = on_answer
        self.on_failure = on_failure
        self.ring_timeout = ring_timeout
        self.winner: Branch | None = None
        self.canceled = False
        self._failures: list[tuple[int, str]] = []
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.ring_timeout is not None:
            self._timer = asyncio.get_running_loop().call_later(self.ring_timeout, self._ring_timed_out)
        for branch in self.branches:
            self._send(branch)

    def _send(self, branch: Branch) -> None:
        branch.tx = self.transactions.send_request(
            branch.request,
            branch.link,
            branch.address,
            functools.partial(self._response, branch, branch.request),
            functools.partial(self._timed_out, branch, branch.request),
        )

    def _retried(self, branch: Branch, status: int, response: Response | None) -> bool:
        """Whether the branch's owner replaced its failed INVITE with another, now sent."""
        if branch.retry is None or self.canceled or self.winner is not None:
            return False
        if not branch.retry(branch, status, response):
            return False
        self._send(branch)
        return True

    def cancel(self) -> None:
        """CANCEL every branch still ringing; no failure is reported after this."""
        self.canceled = True
        self._stop_timer()
        for branch in self.branches:
            if branch is not self.winner and not branch.final:
                self._cancel(branch)

    def _response(self, branch: Branch, sent: Request, response: Response) -> None:
        if sent is not branch.request:
            return  # an answer to a request this branch has replaced (a challenged INVITE)
        status = response.status
        if status < 200:
            if branch.cancel_waits:
                branch.cancel_waits = False
                self._send_cancel(branch)
                return
            if not self.canceled and self.winner is None and status > 100:
                self.on_provisional(branch, response)
            return
        if status < 300:
            if self.winner is None and not self.canceled:
                self.winner = branch
                branch.final = status
                self._stop_timer()
                for other in self.branches:
                    if other is not branch and not other.final:
                        self._cancel(other)
            if branch is self.winner:
                self.on_answer(branch, response)  # retransmissions too: the owner ACKs each
            else:
                self._hang_up_late(branch, response)
            return
        if branch.final or self._retried(branch, status, response):
            return
        branch.final = status
        branch.released()
        self._failures.append((status, response.reason))
        self._maybe_failed()

    def _timed_out(self, branch: Branch, sent: Request) -> None:
        if branch.final or sent is not branch.request or self._retried(branch, 408, None):
            return
        branch.final = 408
        branch.released()
        self._failures.append((408, "Request Timeout"))
        self._maybe_failed()

    def _ring_timed_out(self) -> None:
        self._timer = None
        if self.winner is not None or self.canceled:
            return
        for branch in self.branches:
            if not branch.final:
                self._cancel(branch)
        self._failures.append((480, "No Answer"))
        self.canceled = True
        self.on_failure(*self.best_failure())

    def _maybe_failed(self) -> None:
        if self.canceled or self.winner is not None:
            return
        six = [f for f in self._failures if f[0] >= 600]
        if six or all(b.final for b in self.branches):
            self._stop_timer()
            for branch in self.branches:
                if not branch.final:
                    self._cancel(branch)
            self.canceled = True
            self.on_failure(*self.best_failure())

    def best_failure(self) -> tuple[int, str]:
        six = [f for f in self._failures if f[0] >= 600]
        if six:
            return six[0]
        lowest = min(status // 100 for status, _ in self._failures)
        return next(f for f in self._failures if f[0] // 100 == lowest)

    def _cancel(self, branch: Branch) -> None:
        branch.final = branch.final or 487
        branch.released()
        if branch.tx is not None and branch.tx.state == "Calling":
            # RFC 3261 9.1: no CANCEL before a provisional answer (it could overtake the INVITE);
            # a branch that never answers at all ends with its transaction's timer.
            branch.cancel_waits = True
            return
        self._send_cancel(branch)

    def _send_cancel(self, branch: Branch) -> None:
        self.transactions.send_request(
            cancel_for(branch.request), branch.link, branch.address, lambda r: None, lambda: None
        )

    def _hang_up_late(self, branch: Branch, response: Response) -> None:
        """A branch answered after losing: ACK its 2xx (each retransmission) and BYE it once."""
        via = sent_by(branch.link)
        dialog = Dialog.as_uac(branch.request, response)
        ack = dialog.ack(via, branch.request.cseq.number)
        self.transactions.send_direct(ack, branch.link, branch.address)
        if branch.final != -1:
            branch.final = -1  # hung up: a retransmitted 2xx gets only its ACK
            bye = dialog.request("BYE", via)
            self.transactions.send_request(bye, branch.link, branch.address, lambda r: None, lambda: None)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def cancel_for(invite: Request) -> Request:
    """RFC 3261 9.1: the CANCEL for a pending INVITE (same Via, From, To, Call-ID, CSeq number)."""
    headers = Headers()
    headers.add("Via", invite.headers.get_lines("Via")[0])
    for route in invite.headers.get_lines("Route"):
        headers.add("Route", route)
    for name in ("From", "To", "Call-ID"):
        headers.add(name, invite.headers.get(name) or "")
    headers.add("CSeq", f"{invite.cseq.number} CANCEL")
    headers.add("Max-Forwards", "70")
    return Request("CANCEL", invite.uri, headers)
