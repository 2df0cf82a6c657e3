"""Phones for the callstate bench: one UDP socket each, answering every call they get.

A phone registers (digest, MD5), answers INVITEs with SDP (re-INVITEs too), takes UPDATE, NOTIFY
and BYE with 200, and tells its owner what arrived, with the time it arrived. A phone with
``refer_to`` transfers each call it answers to that number (blind REFER) once the call's ACK comes.
Thousands of calls through real gateways need a phone that costs nothing to drive; SIPp runs one
scenario per call and cannot time events across processes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

from tests.harness.sipmsg import digest_authorization, response
from tests.harness.sipmsg import header as field

SDP = "v=0\r\no=bench 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
CRLF = "\r\n"
ALLOW = "Allow: INVITE, ACK, BYE, CANCEL, UPDATE, REFER, NOTIFY\r\n"
Listener = Callable[[str, str, float], None]  # (what, call id as the phone sees it, when)


class Phone(asyncio.DatagramProtocol):
    def __init__(self, number: str, password: str, gateway: tuple[str, int], refer_to: str = ""):
        self.number, self.password, self.gateway, self.refer_to = number, password, gateway, refer_to
        self.transport: asyncio.DatagramTransport | None = None
        self.local = ""
        self.listeners: list[Listener] = []
        self._registered: asyncio.Future[bool] | None = None
        self._invites: dict[str, str] = {}  # Call-ID -> the INVITE that made the call
        self._referred: set[str] = set()
        self._refers = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        await self.register()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        host, port = transport.get_extra_info("sockname")[:2]
        self.local = f"{host}:{port}"

    def send(self, text: str) -> None:
        assert self.transport is not None
        self.transport.sendto(text.encode(), self.gateway)

    async def register(self) -> None:
        self._registered = asyncio.get_running_loop().create_future()
        self._register("")
        await asyncio.wait_for(self._registered, 5)

    def _register(self, auth: str, cseq: int = 1) -> None:
        uri = f"sip:{self.gateway[0]}"
        self.send(
            f"REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {self.local};branch=z9hG4bKreg{cseq}{self.number};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{self.number}@{self.gateway[0]}>;tag=reg{self.number}\r\n"
            f"To: <sip:{self.number}@{self.gateway[0]}>\r\nCall-ID: reg-{self.number}-{self.local}\r\n"
            f"CSeq: {cseq} REGISTER\r\nContact: <sip:{self.number}@{self.local}>\r\nExpires: 600\r\n{auth}"
            "Content-Length: 0\r\n\r\n"
        )

    def _authorize(self, challenge: str) -> str:
        uri = f"sip:{self.gateway[0]}"
        return digest_authorization(challenge, "REGISTER", uri, self.number, self.password, "bench")

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        at = time.perf_counter()
        text = data.decode(errors="replace")
        first = text.split("\r\n", 1)[0]
        if first.startswith("SIP/2.0"):
            self._response(text, first)
            return
        method = first.split(" ", 1)[0]
        call_id = field(text, "Call-ID")
        if method == "INVITE":
            fresh = "tag=" not in field(text, "To")
            if fresh:
                self._invites[call_id] = text
                self._reply(text, "180 Ringing")
            contact = f"Contact: <sip:{self.number}@{self.local}>\r\n"
            self._reply(text, "200 OK", f"{contact}{ALLOW}Content-Type: application/sdp\r\n", SDP)
            self._tell("invite" if fresh else "reinvite", call_id, at)
        elif method == "ACK":
            self._tell("ack", call_id, at)
            invite = self._invites.get(call_id)
            if self.refer_to and invite is not None and call_id not in self._referred:
                self._referred.add(call_id)
                self._refer(invite)
                self._tell("refer", call_id, time.perf_counter())
        elif method in ("UPDATE", "NOTIFY", "BYE", "OPTIONS"):
            self._reply(text, "200 OK")
            if method == "UPDATE":
                self._tell(f"update {field(text, 'P-Asserted-Identity')}", call_id, at)
            elif method == "BYE":
                self._invites.pop(call_id, None)
                self._referred.discard(call_id)
                self._tell("bye", call_id, at)
            elif method == "NOTIFY":
                self._tell(f"notify {text.split(CRLF * 2, 1)[-1].split(CRLF, 1)[0]}", call_id, at)

    def _response(self, text: str, first: str) -> None:
        if "REGISTER" in field(text, "CSeq") and self._registered is not None and not self._registered.done():
            if first.startswith("SIP/2.0 401"):
                self._register(self._authorize(text), 2)
            elif first.startswith("SIP/2.0 200"):
                self._registered.set_result(True)
            else:
                self._registered.set_exception(RuntimeError(f"{self.number} could not register: {first}"))

    def _reply(self, request: str, status: str, extra: str = "", body: str = "") -> None:
        tag = f"p{self.number}x{abs(hash(field(request, 'Call-ID'))) % 10**8}"
        self.send(response(request, status, to_tag=tag, extra=extra, body=body))

    def _refer(self, invite: str) -> None:
        self._refers += 1
        to = field(invite, "To") + f";tag=p{self.number}x{abs(hash(field(invite, 'Call-ID'))) % 10**8}"
        target = re.search(r"<([^>]+)>", field(invite, "Contact"))
        assert target is not None
        self.send(
            f"REFER {target.group(1)} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.local};branch=z9hG4bKrefer{self._refers}x{self.number};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: {to}\r\nTo: {field(invite, 'From')}\r\nCall-ID: {field(invite, 'Call-ID')}\r\n"
            f"CSeq: 1 REFER\r\nContact: <sip:{self.number}@{self.local}>\r\n"
            f"Refer-To: <sip:{self.refer_to}@{self.gateway[0]}>\r\nContent-Length: 0\r\n\r\n"
        )

    def _tell(self, what: str, call_id: str, at: float) -> None:
        for listener in self.listeners:
            listener(what, call_id, at)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
