"""UDP and TCP transports on loopback sockets: delivery, Via stamping (RFC 3581), 400 answers."""

from __future__ import annotations

import asyncio
import socket

from services.sipgw.sip import Request, Response
from services.sipgw.sip.transport import Address, Link, TcpListener, UdpEndpoint


def options(via: str, call_id: str = "c1@127.0.0.1", extra: str = "") -> bytes:
    return (
        f"OPTIONS sip:100@127.0.0.1 SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:200@127.0.0.1>;tag=a1\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: {call_id}\r\n"
        f"CSeq: 1 OPTIONS\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


class Inbox:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Request | Response, Address, Link]] = asyncio.Queue()

    def __call__(self, message: Request | Response, source: Address, link: Link) -> None:
        self.queue.put_nowait((message, source, link))

    async def next(self) -> tuple[Request | Response, Address, Link]:
        return await asyncio.wait_for(self.queue.get(), 3)


def udp_client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(3)
    return sock


async def test_udp_delivers_and_stamps_received_and_rport() -> None:
    inbox = Inbox()
    endpoint = await UdpEndpoint.open("127.0.0.1", 0, inbox)
    client = udp_client()
    try:
        port = client.getsockname()[1]
        client.sendto(options("SIP/2.0/UDP 127.0.0.2:5099;branch=z9hG4bK1;rport"), endpoint.local)
        message, source, link = await inbox.next()
        assert isinstance(message, Request) and message.method == "OPTIONS"
        assert source == ("127.0.0.1", port) and link is endpoint
        top = message.top_via
        assert (top.received, top.rport, top.branch) == ("127.0.0.1", port, "z9hG4bK1")
        # Same host, no rport: nothing to add.
        client.sendto(options(f"SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK2", "c2"), endpoint.local)
        message, _, _ = await inbox.next()
        assert message.top_via.received is None and not message.top_via.has_rport
        # Another host, no rport: received only.
        client.sendto(options("SIP/2.0/UDP 127.0.0.3;branch=z9hG4bK3", "c3"), endpoint.local)
        message, _, _ = await inbox.next()
        assert message.top_via.received == "127.0.0.1" and message.top_via.rport is None
        # Answers go back on the same socket.
        endpoint.send(b"SIP/2.0 200 OK\r\n\r\n", source)
        assert (await asyncio.to_thread(client.recvfrom, 65536))[0].startswith(b"SIP/2.0 200 OK")
    finally:
        client.close()
        endpoint.close()


async def test_udp_answers_a_broken_request_with_400_and_drops_what_cannot_be_answered() -> None:
    inbox = Inbox()
    endpoint = await UdpEndpoint.open("127.0.0.1", 0, inbox)
    client = udp_client()
    try:
        broken = options("SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK9", "bad-1", extra="Max-Forwards: 5\r\n")
        client.sendto(broken, endpoint.local)
        answer = (await asyncio.to_thread(client.recvfrom, 65536))[0]
        assert answer.startswith(b"SIP/2.0 400 Bad Request")
        assert b"Call-ID: bad-1" in answer and b"CSeq: 1 OPTIONS" in answer and b"z9hG4bK9" in answer
        client.sendto(b"\r\n\r\n", endpoint.local)  # keepalive: ignored
        client.sendto(b"\x00\xffgarbage", endpoint.local)  # unanswerable: dropped
        client.sendto(options("SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKok", "good-1"), endpoint.local)
        message, _, _ = await inbox.next()
        assert isinstance(message, Request) and message.call_id == "good-1"
        assert inbox.queue.empty()
    finally:
        client.close()
        endpoint.close()


async def test_tcp_frames_a_stream_and_closes_on_a_framing_error() -> None:
    inbox = Inbox()
    listener = await TcpListener.open("127.0.0.1", 0, inbox)
    try:
        reader, writer = await asyncio.open_connection(*listener.local)
        first = options("SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bKt1", "t1")
        second = options("SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bKt2", "t2")
        third = options("SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bKt3", "t3")
        writer.write(first + b"\r\n\r\n" + second + third[:40])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(third[40:])
        await writer.drain()
        got = [(await inbox.next())[0] for _ in range(3)]
        assert [m.call_id for m in got] == ["t1", "t2", "t3"]
        message, source, link = got[0], *(await _peer(listener))
        assert link.name == "TCP" and source[0] == "127.0.0.1"
        link.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", source)
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)).startswith(b"SIP/2.0 200 OK")
        writer.write(b"NOT SIP AT ALL\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 3) == b""  # the server closed the stream
        writer.close()
        assert isinstance(message, Request)
    finally:
        await listener.close()


async def _peer(listener: TcpListener) -> tuple[Address, Link]:
    connection = await listener.connection_to(next(iter(listener._pool)))
    return connection.peer, connection


async def test_tcp_opens_a_connection_to_send_and_reuses_it() -> None:
    server_inbox, client_inbox = Inbox(), Inbox()
    server = await TcpListener.open("127.0.0.1", 0, server_inbox)
    client = await TcpListener.open("127.0.0.1", 0, client_inbox)
    try:
        connection = await client.connection_to(server.local)
        assert await client.connection_to(server.local) is connection
        connection.send(options("SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bKc1", "out-1"), server.local)
        message, source, link = await server_inbox.next()
        assert isinstance(message, Request) and message.call_id == "out-1"
        link.send(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bKc1\r\n"
                  b"From: <sip:200@127.0.0.1>;tag=a1\r\nTo: <sip:100@127.0.0.1>;tag=b1\r\nCall-ID: out-1\r\n"
                  b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", source)  # fmt: skip
        answer, _, _ = await client_inbox.next()
        assert isinstance(answer, Response) and answer.status == 200 and answer.call_id == "out-1"
    finally:
        await client.close()
        await server.close()


async def test_tcp_send_opens_a_connection_only_to_a_dialable_address_and_keeps_what_waits_in_order() -> None:
    server_inbox, client_inbox = Inbox(), Inbox()
    server = await TcpListener.open("127.0.0.1", 0, server_inbox)
    client = await TcpListener.open("127.0.0.1", 0, client_inbox)
    try:
        client.send(options("SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bKd0", "not-dialable"), server.local)
        # Decided at once: no connection is being opened, and nothing waits for one.
        assert not client._dialing and not client._waiting and client.connections == 0
        client.dialable = {server.local}
        for n in range(3):  # sent while the connection is being opened
            client.send(options(f"SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bKd{n + 1}", f"waited-{n}"), server.local)
        got = [(await server_inbox.next())[0] for _ in range(3)]
        assert [m.call_id for m in got] == ["waited-0", "waited-1", "waited-2"]
        assert client.connections == 1
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        client.dialable.add(closed.getsockname())  # nothing listens there: dropped with a warning
        client.send(options("SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bKd9", "refused"), closed.getsockname())
        assert client._dialing
        await asyncio.wait_for(asyncio.gather(*client._dialing), 5)  # the attempt over
        closed.close()
        assert client.connections == 1 and not client._waiting and server.connections == 1
    finally:
        await client.close()
        await server.close()
