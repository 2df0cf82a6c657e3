"""Where leg B of a call goes: every place a number, a department or a full URI is rung.

An own number rings each registered contact of it (on the transport it registered over, to the
address its REGISTER came from). Another server's number, from the registry's plan, goes over the
trunk to that server's trunk address; a full ``sip:number@ip:port`` goes over the trunk to that
address. A department rings every registered phone of this server's numbers in it. Each branch
that leaves on the trunk holds one trunk line until it ends.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from services.runtime.addresses import parse_host_port
from services.runtime.config_calls import parse_target_uri
from services.runtime.logs import call_log
from services.runtime.text import printable
from services.sipgw.fork import Branch
from services.sipgw.plan_feed import PlanFeed
from services.sipgw.registrar import Bindings
from services.sipgw.sip import Request, parse_uri
from services.sipgw.sip.dialog import new_tag
from services.sipgw.sip.headers import Headers
from services.sipgw.sip.transaction import new_branch
from services.sipgw.sip.transport import Address, Link, scheme, scheme_of
from services.sipgw.trunk import FROM_PROVIDER, Trunk
from services.sipgw.trunk_lines import NoLineFree

if TYPE_CHECKING:
    from services.sipgw.external import External

_log = logging.getLogger(__name__)

Failure = tuple[int, str]
NOT_FOUND: Failure = (404, "Not Found")
# What the gateway takes, said in its INVITEs and their 2xx: UPDATE among them lets the far end
# (a phone, another gateway) refresh a session or name a new party without a re-INVITE.
ALLOW = "INVITE, ACK, CANCEL, BYE, REGISTER, OPTIONS, UPDATE, REFER, NOTIFY"
UNAVAILABLE: Failure = (480, "Temporarily Unavailable")


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """What every branch of leg B carries from the caller's side."""

    caller: str
    display: str | None
    max_forwards: int
    correlation: str
    body: bytes = b""
    content_type: str = ""
    path: tuple[str, ...] = ()  # servers the call has passed before this one
    origin: str = "phone"  # who asks for it, as the toll fraud guard sees it (toll.py)
    source: str = ""  # the same, for a log line: a phone's address, a server, a provider


class Router:
    def __init__(
        self,
        bindings: Bindings,
        own_numbers: set[str],
        departments: Mapping[str, Sequence[str]],
        plan: PlanFeed | None = None,
        trunk: Trunk | None = None,
    ):
        self.bindings = bindings
        self.own_numbers = own_numbers
        self.departments = departments  # department id -> this server's numbers in it
        self.plan = plan
        self.trunk = trunk
        self.phone_links: dict[str, Link] = {}  # "UDP"/"TCP" -> the phones' endpoint, once open
        self.external: External | None = None  # numbers outside the group (external.py)

    def number(self, number: str, out: Outgoing) -> list[Branch] | Failure:
        if number in self.own_numbers:
            return self._phones([number], out)
        route = self.plan.resolve(number) if self.plan is not None else None
        if route is None and self.external is not None:
            return self.external.branches(number, out)
        if route is None or route.local or not route.trunk_address:
            return NOT_FOUND
        address = self.plan.trunks.address(route.trunk_address) if self.plan is not None else None
        if address is None:
            return (503, f"Service Unavailable (server {route.server_id}'s trunk address is not resolved)")
        host, port = address
        call_log(_log, out.correlation).info("goes to server %s over the trunk", route.server_id)
        branches = self._trunk(number, host, port, out)
        if isinstance(branches, list):
            branches[0].peer_server_id = route.server_id
        return branches

    def server(self, server_id: str, number: str, out: Outgoing) -> list[Branch] | Failure:
        """``number`` on the group's server ``server_id``, over the trunk to the address the
        registry's plan gives for that server (never one named in a message)."""
        plan = self.plan
        advertised = next(
            (
                r.trunk_address
                for r in (plan.routes.values() if plan else ())
                if r.server_id == server_id and not r.local
            ),
            "",
        )
        address = plan.trunks.address(advertised) if plan is not None and advertised else None
        if address is None:
            return (404, f"Not Found (no trunk address of server {server_id})")
        branches = self._trunk(number, *address, out)
        if isinstance(branches, list):
            branches[0].peer_server_id = server_id
        return branches

    def trunk_branch(self, advertised: str, server_id: str, number: str, out: Outgoing) -> Branch | Failure:
        """One branch over the trunk to the server whose advertised trunk address the registry
        gave (a router server taking an external call)."""
        address = self.plan.trunks.address(advertised) if self.plan is not None and advertised else None
        if address is None:
            return (503, f"Service Unavailable (server {server_id}'s trunk address is not resolved)")
        branches = self._trunk(number, *address, out)
        if isinstance(branches, tuple):
            return branches
        branches[0].peer_server_id = server_id
        call_log(_log, out.correlation).info("goes out through router server %s over the trunk", server_id)
        return branches[0]

    def is_external(self, number: str) -> bool:
        """Whether ``number`` is no internal number of the group but one of this server's own
        routes to the outside takes it."""
        if number in self.own_numbers or self.external is None:
            return False
        if self.plan is not None and self.plan.resolve(number) is not None:
            return False
        return bool(self.external.own_routes(self.external.normalise(number)))

    def department(self, department: str, out: Outgoing) -> list[Branch] | Failure:
        numbers = self.departments.get(department, ())
        return self._phones(list(numbers), out) if numbers else NOT_FOUND

    def target(self, target: str, out: Outgoing) -> list[Branch] | Failure:
        """A number, or a full ``sip:number@ip:port``."""
        parsed = parse_target_uri(target)
        if parsed is None:
            return self.number(target, out)
        number, host, port = parsed
        return self._trunk(number, host, port, out)

    def _phones(self, numbers: list[str], out: Outgoing) -> list[Branch] | Failure:
        branches = []
        for number in numbers:
            for binding in self.bindings.lookup(number):
                link = self.phone_links.get(binding.transport) or self.phone_links.get("UDP")
                if link is None:
                    continue
                request = self.invite(number, binding.contact, link, out)
                branches.append(Branch(request, parse_host_port(binding.source), link))
        return branches or UNAVAILABLE

    def _trunk(self, number: str, host: str, port: int, out: Outgoing) -> list[Branch] | Failure:
        trunk = self.trunk
        if trunk is None or trunk.endpoint is None:
            return NOT_FOUND
        try:
            trunk.lines.take(outgoing=True)
        except NoLineFree as error:
            return (503, f"Service Unavailable ({error})")
        shown = f"[{host}]" if ":" in host else host
        request = self.invite(number, f"{scheme(trunk.endpoint)}:{number}@{shown}:{port}", trunk.endpoint, out)
        trunk.identity(request.headers, out.caller, out.display, out.correlation, out.path)
        if out.origin == "provider":
            request.headers.add(FROM_PROVIDER, "yes")
        address: Address = (host, port)
        release = functools.partial(trunk.lines.give_back, outgoing=True)
        return [Branch(request, address, trunk.endpoint, over_trunk=True, release=release)]

    @staticmethod
    def invite(called: str, contact: str, link: Link, out: Outgoing) -> Request:
        """Leg B's INVITE: our own dialog toward the callee, the caller's identity and offer in it."""
        local = f"{link.local[0]}:{link.local[1]}"
        headers = Headers()
        headers.add("Via", f"SIP/2.0/{link.name} {local};branch={new_branch()};rport")
        headers.add("Max-Forwards", str(out.max_forwards))
        # The display name comes from the plan or a phone: never let it end the header (CR, LF)
        # or the quoted string (") whatever let it through upstream.
        display = printable(out.display).replace('"', "").strip() if out.display else ""
        name = f'"{display}" ' if display else ""
        headers.add("From", f"{name}<sip:{out.caller}@{local}>;tag={new_tag()}")
        headers.add("To", f"<sip:{called}@{local}>")
        headers.add("Call-ID", f"{uuid.uuid4().hex}@{local}")
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", f"<{scheme_of(contact)}:{out.caller}@{local}>")
        headers.add("Allow", ALLOW)
        if out.content_type and out.body:
            headers.add("Content-Type", out.content_type)
        return Request("INVITE", parse_uri(contact), headers, out.body)
