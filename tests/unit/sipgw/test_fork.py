"""Forking over the real transaction layer and a fake link: who wins, who is canceled, which
failure the caller hears."""

from __future__ import annotations

import asyncio
import functools

from services.sipgw.fork import Branch, Fork
from services.sipgw.sdp import refusal
from services.sipgw.sip import Request, Response, parse
from services.sipgw.sip.transaction import TransactionLayer, new_branch
from tests.unit.sipgw.test_transaction import FakeLink, layer


def invite(n: int) -> Request:
    message = parse(
        f"INVITE sip:10{n}@127.0.0.1:50{n}0 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={new_branch()}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:200@127.0.0.1>;tag=f{n}\r\nTo: <sip:100@127.0.0.1>\r\n"
        f"Call-ID: fork-{n}\r\nCSeq: 1 INVITE\r\nContact: <sip:200@127.0.0.1:5060>\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(message, Request)
    return message


def answer(branch: Branch, status: int, tag: str = "t1") -> Response:
    request = branch.request
    message = parse(
        f"SIP/2.0 {status} X\r\nVia: {request.headers.get('Via')}\r\nFrom: {request.headers.get('From')}\r\n"
        f"To: {request.headers.get('To')};tag={tag}\r\nCall-ID: {request.call_id}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:100@127.0.0.1:5999>\r\nContent-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(message, Response)
    return message


class Owner:
    def __init__(self) -> None:
        self.ringing: list[int] = []
        self.answers: list[Branch] = []
        self.failures: list[tuple[int, str]] = []


def forked(count: int, ring_timeout: float | None = None) -> tuple[TransactionLayer, FakeLink, Fork, Owner, list[int]]:
    tl, link, owner = layer(), FakeLink(), Owner()
    released: list[int] = []
    branches = [
        Branch(invite(n), ("127.0.0.1", 5000 + n), link, release=functools.partial(released.append, n))
        for n in range(count)
    ]
    fork = Fork(
        tl,
        branches,
        lambda b, r: owner.ringing.append(r.status),
        lambda b, r: owner.answers.append(b),
        lambda status, reason: owner.failures.append((status, reason)),
        ring_timeout,
    )
    fork.start()
    return tl, link, fork, owner, released


def cancels(link: FakeLink) -> set[bytes]:
    """The branches canceled (a CANCEL over UDP is retransmitted until answered)."""
    return {data.split(b"Call-ID: ")[1].split(b"\r\n")[0] for data, _ in link.sent if data.startswith(b"CANCEL")}


async def test_the_first_answer_wins_and_the_other_branches_are_canceled() -> None:
    tl, link, fork, owner, released = forked(3)
    tl.receive(answer(fork.branches[1], 180), ("127.0.0.1", 5001), link)
    tl.receive(answer(fork.branches[2], 200), ("127.0.0.1", 5002), link)
    assert owner.ringing == [180] and owner.answers == [fork.branches[2]] and fork.winner is fork.branches[2]
    assert cancels(link) == {b"fork-1"} and sorted(released) == [0, 1]  # the winner keeps its line
    # Branch 0 had not answered at all: its CANCEL waits for its first provisional answer.
    tl.receive(answer(fork.branches[0], 100), ("127.0.0.1", 5000), link)
    assert cancels(link) == {b"fork-0", b"fork-1"} and owner.ringing == [180]
    tl.receive(answer(fork.branches[2], 200), ("127.0.0.1", 5002), link)
    assert owner.answers == [fork.branches[2]] * 2  # a retransmitted 2xx reaches the owner to re-ACK


async def test_a_late_answer_from_a_canceled_branch_is_acked_and_hung_up() -> None:
    tl, link, fork, owner, _ = forked(2)
    tl.receive(answer(fork.branches[0], 200), ("127.0.0.1", 5000), link)
    tl.receive(answer(fork.branches[1], 200, tag="late"), ("127.0.0.1", 5001), link)
    assert owner.answers == [fork.branches[0]]
    byes = [data for data, _ in link.sent if data.startswith(b"BYE")]
    acks = [data for data, _ in link.sent if data.startswith(b"ACK")]
    assert len(byes) == 1 and b"tag=late" in byes[0] and len(acks) == 1


async def test_the_caller_hears_the_lowest_class_failure_once_every_branch_failed() -> None:
    tl, link, fork, owner, released = forked(3)
    tl.receive(answer(fork.branches[0], 503), ("127.0.0.1", 5000), link)
    tl.receive(answer(fork.branches[1], 486), ("127.0.0.1", 5001), link)
    assert owner.failures == []
    tl.receive(answer(fork.branches[2], 480), ("127.0.0.1", 5002), link)
    assert owner.failures == [(486, "X")] and sorted(released) == [0, 1, 2]


async def test_a_6xx_ends_the_fork_at_once() -> None:
    tl, link, fork, owner, _ = forked(3)
    tl.receive(answer(fork.branches[0], 486), ("127.0.0.1", 5000), link)
    tl.receive(answer(fork.branches[2], 180), ("127.0.0.1", 5002), link)
    tl.receive(answer(fork.branches[1], 603), ("127.0.0.1", 5001), link)
    assert owner.failures == [(603, "X")] and cancels(link) == {b"fork-2"}


async def test_no_answer_within_the_ring_time_cancels_everything() -> None:
    tl, link, fork, owner, released = forked(2, ring_timeout=0.02)
    tl.receive(answer(fork.branches[0], 180), ("127.0.0.1", 5000), link)
    tl.receive(answer(fork.branches[1], 100), ("127.0.0.1", 5001), link)
    await asyncio.sleep(0.05)
    assert owner.failures == [(480, "No Answer")] and len(cancels(link)) == 2 and sorted(released) == [0, 1]


async def test_a_canceled_fork_reports_nothing() -> None:
    tl, link, fork, owner, _ = forked(2)
    for n in (0, 1):
        tl.receive(answer(fork.branches[n], 180), ("127.0.0.1", 5000 + n), link)
    fork.cancel()
    tl.receive(answer(fork.branches[0], 487), ("127.0.0.1", 5000), link)
    tl.receive(answer(fork.branches[1], 487), ("127.0.0.1", 5001), link)
    assert owner.failures == [] and owner.answers == [] and len(cancels(link)) == 2


def test_the_refusal_answer_keeps_every_stream_with_port_zero() -> None:
    offer = (
        b"v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=audio 4000 RTP/AVP 0 8\r\nm=video 4002 RTP/AVP 96\r\n"
    )
    refused = refusal(offer).decode()
    assert "m=audio 0 RTP/AVP 0 8\r\n" in refused and "m=video 0 RTP/AVP 96\r\n" in refused
    assert refusal(b"") == b""
