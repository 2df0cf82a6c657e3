"""Transaction state machines over a fake link, with timers shrunk 100-fold."""

from __future__ import annotations

import asyncio

from services.sipgw.sip import Request, Response, parse
from services.sipgw.sip.transaction import ServerTransaction, Timers, TransactionLayer, new_branch
from services.sipgw.sip.transport import Address

FAST = Timers(t1=0.005, t2=0.04, t4=0.05)
PEER: Address = ("127.0.0.1", 5099)


class FakeLink:
    def __init__(self, name: str = "UDP") -> None:
        self.name = name
        self.local: Address = ("127.0.0.1", 5060)
        self.sent: list[tuple[bytes, Address]] = []

    def send(self, data: bytes, address: Address) -> None:
        self.sent.append((data, address))

    def starts(self, prefix: bytes) -> int:
        return sum(1 for data, _ in self.sent if data.startswith(prefix))


def request(method: str, branch: str, cseq: int = 1) -> Request:
    message = parse(
        f"{method} sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch={branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:200@127.0.0.1>;tag=f1\r\nTo: <sip:100@127.0.0.1>\r\n"
        f"Call-ID: call-1\r\nCSeq: {cseq} {method}\r\nContact: <sip:200@127.0.0.1:5099>\r\n"
        f"Content-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(message, Request)
    return message


def response(status: int, branch: str, method: str = "INVITE") -> Response:
    message = parse(
        f"SIP/2.0 {status} X\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\n"
        f"From: <sip:200@127.0.0.1>;tag=f1\r\nTo: <sip:100@127.0.0.1>;tag=t9\r\nCall-ID: call-1\r\n"
        f"CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(message, Response)
    return message


def serving(method: str) -> tuple[TransactionLayer, FakeLink, list[tuple[ServerTransaction, Request]], Request]:
    """A layer that has just received ``method`` on a fresh branch: (layer, link, what the core saw, request)."""
    link = FakeLink()
    seen: list[tuple[ServerTransaction, Request]] = []
    tl = layer(seen)
    received = request(method, new_branch())
    tl.receive(received, PEER, link)
    return tl, link, seen, received


def layer(requests: list[tuple[ServerTransaction, Request]] | None = None) -> TransactionLayer:
    seen = requests if requests is not None else []
    return TransactionLayer(lambda t, r: seen.append((t, r)), timers=FAST)


async def test_invite_client_retransmits_with_timer_a_and_times_out_with_timer_b() -> None:
    link = FakeLink()
    timeouts: list[int] = []
    tl = layer()
    branch = new_branch()
    tl.send_request(request("INVITE", branch), link, PEER, lambda r: None, lambda: timeouts.append(1))
    await asyncio.sleep(FAST.b + 0.1)
    sent = link.starts(b"INVITE")
    # T1 doubling within 64*T1: the first send and up to 6 retransmissions (fewer if the loop is late).
    assert 5 <= sent <= 7
    assert timeouts == [1] and tl.clients == {}


async def test_provisional_stops_invite_retransmissions_and_non_2xx_is_acked() -> None:
    link = FakeLink()
    got: list[Response] = []
    tl = layer()
    branch = new_branch()
    tl.send_request(request("INVITE", branch), link, PEER, got.append, lambda: None)
    tl.receive(response(180, branch), PEER, link)
    await asyncio.sleep(FAST.t1 * 8)
    assert link.starts(b"INVITE") == 1
    tl.receive(response(486, branch), PEER, link)
    tl.receive(response(486, branch), PEER, link)  # a retransmission: ACKed again, not delivered
    assert [r.status for r in got] == [180, 486]
    acks = [parse(data) for data, _ in link.sent if data.startswith(b"ACK")]
    assert len(acks) == 2
    ack = acks[0]
    assert isinstance(ack, Request) and ack.cseq.method == "ACK" and ack.top_via.branch == branch
    assert ack.to_addr.params.get("tag") == "t9"


async def test_2xx_to_invite_is_accepted_and_its_retransmissions_reach_the_core() -> None:
    link = FakeLink()
    got: list[Response] = []
    tl = layer()
    branch = new_branch()
    client = tl.send_request(request("INVITE", branch), link, PEER, got.append, lambda: None)
    tl.receive(response(200, branch), PEER, link)
    tl.receive(response(200, branch), PEER, link)
    assert client.state == "Accepted" and [r.status for r in got] == [200, 200]
    assert link.starts(b"ACK") == 0  # the ACK for a 2xx is the dialog's, not the transaction's
    await asyncio.sleep(FAST.b + 0.05)
    assert tl.clients == {}


async def test_non_invite_client_retransmits_up_to_t2_and_completes() -> None:
    link = FakeLink()
    got: list[Response] = []
    tl = layer()
    branch = new_branch()
    tl.send_request(request("OPTIONS", branch), link, PEER, got.append, lambda: None)
    await asyncio.sleep(FAST.t1 * 10)
    tl.receive(response(200, branch, "OPTIONS"), PEER, link)
    sent = link.starts(b"OPTIONS")
    await asyncio.sleep(FAST.t2 * 2)
    assert link.starts(b"OPTIONS") == sent >= 3
    assert [r.status for r in got] == [200]


async def test_reliable_transport_never_retransmits() -> None:
    link = FakeLink("TCP")
    tl = layer()
    tl.send_request(request("OPTIONS", new_branch()), link, PEER, lambda r: None, lambda: None)
    await asyncio.sleep(FAST.t2 * 2)
    assert link.starts(b"OPTIONS") == 1


async def test_server_absorbs_retransmissions_resends_final_and_waits_for_ack() -> None:
    link = FakeLink()
    seen: list[tuple[ServerTransaction, Request]] = []
    tl = layer(seen)
    branch = new_branch()
    invite = request("INVITE", branch)
    tl.receive(invite, PEER, link)
    assert len(seen) == 1
    server, _ = seen[0]
    server.respond(response(100, branch))
    tl.receive(invite, PEER, link)  # retransmission: the 100 goes again, the core hears nothing
    assert len(seen) == 1 and link.starts(b"SIP/2.0 100") == 2
    server.respond(response(486, branch))
    await asyncio.sleep(FAST.t1 * 12)
    resent = link.starts(b"SIP/2.0 486")
    assert resent >= 3  # Timer G
    ack = request("ACK", branch)
    tl.receive(ack, PEER, link)
    assert server.state == "Confirmed" and len(seen) == 1
    await asyncio.sleep(FAST.t2)
    assert link.starts(b"SIP/2.0 486") == resent
    await asyncio.sleep(FAST.t4 + 0.02)
    assert tl.servers == {}


async def test_server_2xx_goes_accepted_and_new_ack_reaches_the_core() -> None:
    tl, link, seen, invite = serving("INVITE")
    branch = invite.top_via.branch or ""
    server, _ = seen[0]
    server.respond(response(200, branch))
    tl.receive(invite, PEER, link)  # absorbed in Accepted
    assert server.state == "Accepted" and link.starts(b"SIP/2.0 200") == 1 and len(seen) == 1
    tl.receive(request("ACK", new_branch()), PEER, link)  # the 2xx's ACK is a new transaction
    assert [r.method for _, r in seen] == ["INVITE", "ACK"]
    cancel = request("CANCEL", branch)
    assert tl.invite_for(cancel) is server


async def test_non_invite_server_completes_and_answers_retransmissions() -> None:
    tl, link, seen, options = serving("OPTIONS")
    branch = options.top_via.branch or ""
    server, _ = seen[0]
    server.respond(response(200, branch, "OPTIONS"))
    tl.receive(options, PEER, link)
    assert link.starts(b"SIP/2.0 200") == 2 and len(seen) == 1
    await asyncio.sleep(FAST.b + 0.05)
    assert tl.servers == {}


async def test_an_ack_for_a_2xx_with_the_invites_branch_still_reaches_the_core() -> None:
    tl, link, seen, invite = serving("INVITE")
    branch = invite.top_via.branch or ""
    server, _ = seen[0]
    server.respond(response(200, branch))
    tl.receive(request("ACK", branch), PEER, link)  # some phones reuse the INVITE's branch
    assert [r.method for _, r in seen] == ["INVITE", "ACK"] and server.state == "Accepted"
