"""Handing a call over: a server left in the middle of a call steps out of it.

After A -> B and a transfer on B to a phone on C, B only relays between two trunk legs. B asks A,
in A's dialog and over the signed trunk, to replace its leg toward B with one toward C: a REFER
(RFC 3515) whose Refer-To names the number on C, C as ``<server id>.pbxmesh.invalid`` (A finds
C's trunk in the registry's plan, never at a host named in a message) and, as Replaces (RFC 3891),
B's dialog with C. A sends C an INVITE with that Replaces and its phone's SDP; C finds the dialog,
answers with its phone's SDP and swaps the leg (BYE to B); A swaps its leg (NOTIFY 200 and BYE to
B). Neither phone is asked anything: each keeps talking to the same media addresses. B, hung up
on both legs, frees its lines. If anything fails, B is told (a refusal, a NOTIFY with the failure)
and the call stays up through B as it was. A chain A -> B -> C -> D closes step by step.
"""

from __future__ import annotations

import functools
import logging
import urllib.parse

from services.sipgw import sdp
from services.sipgw.call import Call, Change, Leg, Phase, Side
from services.sipgw.calls import CallTable
from services.sipgw.fork import Branch, Fork
from services.sipgw.loops import bridge
from services.sipgw.routing import Outgoing, Router
from services.sipgw.setup import answer_caller
from services.sipgw.sip import Request, Response, SipURI, parse_name_addr
from services.sipgw.sip.dialog import Dialog, new_tag
from services.sipgw.sip.errors import ParseError
from services.sipgw.sip.transaction import ServerTransaction
from services.sipgw.sip.transport import response_to, scheme_of
from services.sipgw.transfer import notify_refer, parse_replaces, replaces_in
from services.sipgw.trunk import INSTANCE, ORIGIN, Trunk
from services.sipgw.trunk_lines import NoLineFree

_log = logging.getLogger(__name__)

SUFFIX = ".pbxmesh.invalid"  # a server of the group named in a URI: its trunk is found in the plan
ANSWER_WAIT = 10.0  # seconds the server behind the hand-over may take to answer its INVITE


class HandOver:
    """A hand-over in progress on the server that was asked (A): the INVITE toward C."""

    def __init__(self, fork: Fork):
        self.fork = fork

    def cancel(self) -> None:
        if self.fork.winner is None:
            self.fork.cancel()
        for branch in self.fork.branches:
            branch.released()


def offer(table: CallTable, call: Call, asked: Side, attended: bool = False) -> None:
    """On the server in the middle (B): if both legs are trunk legs to other servers of the group,
    asks the one on ``asked`` to take over the other leg directly. Two legs to one server come of
    an attended transfer (that server then joins its two calls itself); after a blind transfer
    that server knows the returning call by its correlation id and closes the loop unasked."""
    keep, moving = call.legs.get(asked), call.legs.get(asked.other)
    if call.phase != Phase.ANSWERED or call.handing_over or keep is None or moving is None:
        return
    if not (keep.trunk and moving.trunk and keep.server and moving.server):
        return
    if keep.server == moving.server and not attended:
        return
    if keep.dialog is None or moving.dialog is None:
        return
    dialog = moving.dialog  # as the server behind it sees it: its to-tag is that server's own
    replaces = urllib.parse.quote(f"{dialog.call_id};to-tag={dialog.remote_tag};from-tag={dialog.local_tag}", safe="")
    refer = table.request(keep, "REFER")
    refer.headers.add("Refer-To", f"<sip:{moving.number}@{moving.server}{SUFFIX}?Replaces={replaces}>")
    call.handing_over = True
    table.log(call).info("handing over: asking %s to call %s directly", keep.server, moving.server)

    def answered(response: Response) -> None:
        if response.status >= 300:
            refused(f"{response.status} {response.reason}")

    def refused(why: str) -> None:
        if call.handing_over:
            _stays(table, call, why)

    table.send(keep, refer, answered, lambda: refused("no answer"))


def notified(table: CallTable, call: Call, tx: ServerTransaction, request: Request) -> None:
    """On B: the asked server's NOTIFY of how the hand-over went (a sipfrag status line)."""
    tx.respond(response_to(request.headers, 200, "OK"))
    status = request.body.split(b" ", 2)[1:2]
    if status and status[0].isdigit() and int(status[0]) >= 300 and call.handing_over:
        _stays(table, call, request.body.decode("utf-8", "replace").strip())


def _stays(table: CallTable, call: Call, why: str) -> None:
    """The hand-over failed: the call goes on through this server, or, if one side hung up
    meanwhile, ends as a hang-up would have."""
    call.handing_over = False
    gone = [side for side in Side if side not in call.legs]
    if not gone:
        table.log(call).info("hand-over failed (%s); the call stays through this server", why)
        return
    for side in call.legs:
        table.bye(call, side)
    table.end(call, f"hung up by {gone[0]}")


def accept(table: CallTable, router: Router, call: Call, side: Side, tx: ServerTransaction, request: Request) -> None:
    """On A: the server behind ``side`` asks this one to call the server behind it directly."""
    if call.phase != Phase.ANSWERED or call.transfer is not None or call.handover is not None:
        tx.respond(response_to(request.headers, 491, "Request Pending"))
        return
    target = _target(request)
    if target is None:
        tx.respond(response_to(request.headers, 400, "Bad Request (Refer-To names no server of the group)"))
        return
    number, server, replaces = target
    if router.trunk is not None and server == router.trunk.server_id:
        _join_here(table, call, side, tx, request, replaces)
        return
    old = call.leg(side)
    staying = call.party(side.other)
    out = Outgoing(staying[0], staying[1] or None, 70, call.id, old.sdp, "application/sdp", call.passed())
    branches = router.server(server, number, out)
    if isinstance(branches, tuple):
        tx.respond(response_to(request.headers, *branches))
        return
    branches[0].request.headers.add("Replaces", replaces)
    tx.respond(response_to(request.headers, 202, "Accepted"))
    done: list[Leg] = []

    def answered(branch: Branch, response: Response) -> None:
        if done:  # a retransmitted 2xx: ACK it again
            table.ack(done[0], branch.request.cseq.number)
            return
        leg = Leg.from_branch(branch, Dialog.as_uac(branch.request, response), number, old.name)
        leg.sdp, leg.allows_update = old.sdp, sdp.allows_update(response)
        if response.headers.get("Content-Type") == "application/sdp":
            table.media.heard_answer(call, side, response.body)  # the new server's media, same leg here
        leg.peer_instance = response.headers.get(INSTANCE) or ""
        done.append(leg)
        table.ack(leg, branch.request.cseq.number)
        call.handover = None
        if call.phase != Phase.ANSWERED:
            table.send(leg, table.request(leg, "BYE"))
            leg.release_line()
            return
        notify_refer(table, old, "200 OK")
        table.bye(call, side)
        table.replace_leg(call, side, leg, event=Change.REROUTED)
        table.log(call).info("handed over: now directly to server %s", server)

    def failed(status: int, reason: str) -> None:
        call.handover = None
        table.log(call).info("hand-over to server %s failed (%s %s); the call stays", server, status, reason)
        notify_refer(table, old, f"{status} {reason}")

    fork = Fork(table.transactions, branches, lambda b, r: None, answered, failed, ring_timeout=ANSWER_WAIT)
    call.handover = HandOver(fork)
    fork.start()


def _join_here(
    table: CallTable, call: Call, side: Side, tx: ServerTransaction, request: Request, replaces: str
) -> None:
    """On A, asked to call itself: the dialog named is a trunk leg of another call here (an
    attended transfer on B joined A's two calls through B); A joins that call's own party to
    this one in place of ``side``'s leg, and both legs to B are hung up."""
    found = table.replaced(parse_replaces(replaces))
    if found is None or found[0] is call or found[0].phase != Phase.ANSWERED or not found[0].leg(found[1]).trunk:
        tx.respond(response_to(request.headers, 481, "Call/Transaction Does Not Exist (Replaces)"))
        return
    inner, trunk_side = found
    tx.respond(response_to(request.headers, 202, "Accepted"))
    old = call.leg(side)
    table.log(call).info("handed over: joining call %s here", inner.id)

    def done(joined: bool) -> None:
        notify_refer(table, old, "200 OK" if joined else "500 Server Internal Error")

    bridge(table, call, side, inner, trunk_side.other, f"joined to call {call.id} here", done)


def take(table: CallTable, trunk: Trunk, tx: ServerTransaction, request: Request) -> None:
    """On C: a trunk INVITE with Replaces takes the place of one of this server's trunk legs."""
    found = table.replaced(parse_replaces(request.headers.get("Replaces") or ""))
    if found is None or found[0].phase != Phase.ANSWERED or not found[0].leg(found[1]).trunk:
        tx.respond(answer_caller(request, 481, "Call/Transaction Does Not Exist (Replaces)"))
        return
    call, side = found
    old = call.leg(side)
    try:
        trunk.lines.take(outgoing=False)
    except NoLineFree as error:
        tx.respond(answer_caller(request, 503, f"Service Unavailable ({error})"))
        return
    tag = new_tag()
    staying = call.party(side.other)[0]
    contact = f"<{scheme_of(request.uri)}:{staying}@{tx.link.local[0]}:{tx.link.local[1]}>"
    answer = answer_caller(request, 200, "OK", tag)
    answer.headers.add("Contact", contact)
    answer.headers.add(INSTANCE, trunk.instance)
    if old.sdp:
        answer.headers.add("Content-Type", "application/sdp")
        answer.body = old.sdp
    number, name = Trunk.caller_of(request)
    leg = Leg(
        number,
        name or "",
        tx.link,
        tx.address,
        Dialog.as_uas(request, tag, contact),
        trunk=True,
        server=request.headers.get(ORIGIN) or "",
        line=functools.partial(trunk.lines.give_back, outgoing=False),
        sdp=request.body or old.sdp,
        allows_update=sdp.allows_update(request),
        peer_instance=request.headers.get(INSTANCE) or "",
    )
    if request.headers.get("Content-Type") == "application/sdp":
        table.media.heard_answer(call, side, request.body)  # the calling server's media, same leg here
    tx.respond(answer)
    table.bye(call, side)
    table.replace_leg(call, side, leg, event=Change.REROUTED)
    table.keep_answering(call, side, answer.to_bytes())
    table.log(call).info("handed over: now directly to server %s", leg.server)


def _target(request: Request) -> tuple[str, str, str] | None:
    """Number, server id and Replaces value of a hand-over's Refer-To, if it is one."""
    try:
        uri = parse_name_addr(request.headers.get("Refer-To") or "").uri
    except ParseError:
        return None
    if not isinstance(uri, SipURI) or not uri.user or not uri.host.endswith(SUFFIX):
        return None
    replaces = replaces_in(uri.headers)
    return (uri.user, uri.host.removesuffix(SUFFIX), replaces) if replaces else None
