"""What the gateway takes from the network at all: per-source rate limits, and no scanners.

Every message comes here first, before the transaction layer, the lockout and any digest or HMAC
work, so that a flood of junk, of guesses or of badly signed trunk requests costs little:

- responses go on (they can only match a transaction of ours, and nothing answers them);
- on the trunk, every request counts against its source address (``trunk.rate_limit``), as does
  every request from a provider's address (``providers[].allow_from``);
- on the phones' port, every request counts against its source address (``sip.rate_limit``) except
  one that carries on what that address already has here: a request inside a dialog of one of its
  calls (re-INVITE, UPDATE, BYE, ACK, REFER, NOTIFY) and the ACK or CANCEL of its INVITE still
  being answered. A phone's registrations and new calls never starve its calls in progress;
- a request whose User-Agent names a scanner (``sip.drop_user_agents``) is dropped.

Dropped means no answer at all: an answer would make the gateway an amplifier toward a spoofed
source, and tells a scanner something is there. Each drop is counted once, by port and method.

Over UDP the check comes twice. Before parsing, a datagram from an address whose bucket is empty
is dropped unless it could continue a call: a method that can, and a To tag (or a CANCEL, which
names its INVITE by branch); such a one is parsed to find out. A flood, INVITEs for new calls
included, costs a dictionary lookup and a glance at the bytes a packet, not a parse. After parsing,
the full check. A malformed message counts against its source too, and gets its 400 only within
the limit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Literal

from services.sipgw.auth.rate_limit import Rate, RateLimiter, source_key
from services.sipgw.sip import Request, Response
from services.sipgw.sip.transport import Address, Link, Receiver

Port = Literal["phones", "trunk"]
# Methods that may continue a dialog or a transaction a phone has here; any other request is new.
CONTINUING = frozenset({"ACK", "BYE", "CANCEL", "INVITE", "UPDATE", "REFER", "NOTIFY", "INFO", "PRACK"})
_CLASSES = {"REGISTER": "register", "INVITE": "invite", "OPTIONS": "options"}
_METHOD_END = 32  # a method is a short token: where the first space must be by
# The To header's line in a message's head (lower case), with any folded continuation lines.
_TO_LINE = re.compile(rb"\r\n(?:to|t)[ \t]*:[^\r]*(?:\r\n[ \t][^\r]*)*")


def method_class(method: str) -> str:
    """The metrics' label for a method: register, invite, options or other (malformed included)."""
    return _CLASSES.get(method, "other")


def _has_to_tag(data: bytes) -> bool:
    """A glance at the raw bytes: whether the To header has a tag (a request inside a dialog). When
    in doubt (no To found), yes: the parser will tell."""
    end = data.find(b"\r\n\r\n")
    head = (data if end < 0 else data[:end]).lower()
    line = _TO_LINE.search(head)
    return line is None or b"tag=" in line.group(0)


def _never(request: Request, source: Address) -> bool:
    return False


def _no_trunk(link: Link) -> bool:
    return False


class Admission:
    def __init__(
        self,
        forward: Receiver,
        phones: Rate,
        trunk: Rate,
        drop_user_agents: Iterable[str] = (),
        *,
        is_trunk: Callable[[Link], bool] = _no_trunk,
        ongoing: Callable[[Request, Address], bool] = _never,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.forward = forward  # the transaction layer's receiver
        self.is_trunk = is_trunk
        self.is_provider: Callable[[Address], bool] = lambda source: False
        self.ongoing = ongoing  # whether a request carries on a call or transaction of its source
        self._limits: dict[Port, RateLimiter] = {
            "phones": RateLimiter(phones, clock),
            "trunk": RateLimiter(trunk, clock),
        }
        self._agents = frozenset(agent.lower() for agent in drop_user_agents)
        # (port, method class) -> requests dropped, since start: the metrics.
        self.rate_limited: dict[tuple[str, str], int] = {}
        self.scanners: dict[tuple[str, str], int] = {}

    # What the transports ask (services/sipgw/sip/transport.py, Gate).

    def before_parse(self, data: bytes, source: Address, link: Link) -> bool:
        """False: drop this datagram unparsed (its source is over the limit, and it cannot be one
        of the requests that go through whatever the rate)."""
        if data.startswith(b"SIP/2.0 "):
            return True
        port = self._port(link, source)
        if self._limits[port].would_allow(source_key(source[0])):
            return True
        end = data.find(b" ", 0, _METHOD_END)
        method = data[:end].decode("ascii", "replace") if end > 0 else ""
        if port == "phones" and method in CONTINUING and (method == "CANCEL" or _has_to_tag(data)):
            return True  # it may belong to a call: parsed, then checked
        self._count(self.rate_limited, port, method)
        return False

    def broken(self, source: Address, link: Link) -> bool:
        """A malformed message counts against its source; True: it may have its 400."""
        port = self._port(link, source)
        if self._limits[port].allow(source_key(source[0])):
            return True
        self._count(self.rate_limited, port, "")
        return False

    def receive(self, message: Request | Response, source: Address, link: Link) -> None:
        """The transports' receiver: what is admitted goes on to the transaction layer."""
        if isinstance(message, Request) and not self._admit(message, source, link):
            return
        self.forward(message, source, link)

    def sources(self, port: Port) -> int:
        """Addresses with a bucket now (bounded: see RateLimiter)."""
        return len(self._limits[port])

    def _admit(self, request: Request, source: Address, link: Link) -> bool:
        port = self._port(link, source)
        method = request.method
        carries_on = port == "phones" and method in CONTINUING and self.ongoing(request, source)
        if not carries_on and not self._limits[port].allow(source_key(source[0])):
            self._count(self.rate_limited, port, method)
            return False
        if self._agents and self._is_scanner(request):
            self._count(self.scanners, port, method)
            return False
        return True

    def _is_scanner(self, request: Request) -> bool:
        """The User-Agent's product name (its first word, before any "/") is a scanner's."""
        agent = request.headers.get("User-Agent")
        if not agent:
            return False
        words = agent.split(None, 1)
        return bool(words) and words[0].split("/", 1)[0].lower() in self._agents

    def _port(self, link: Link, source: Address) -> Port:
        # A provider's calls arrive on the phones' port but come in numbers, like the trunk's: its
        # addresses (allow_from) count against the trunk's larger limit, each on its own.
        return "trunk" if self.is_trunk(link) or self.is_provider(source) else "phones"

    @staticmethod
    def _count(counts: dict[tuple[str, str], int], port: Port, method: str) -> None:
        key = (port, method_class(method))
        counts[key] = counts.get(key, 0) + 1
