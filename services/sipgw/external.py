"""Calls to the outside world: a dialed number that no server of the group has.

The number is first rewritten by this server's dialing rules (routes without a provider), then
the routes that match it are tried one after the other, each only if the one before refuses
(503), times out (408) or has no line free: this server's own providers first (its routes in
priority order), then the group's router servers over the inter-server trunk (priority, then
join order, as the registry merges them). A call that came over the trunk is carried out through
this server's own providers only: the server that sent it tries the next router server itself.

The toll fraud guard (``toll.py``) admits the call once, before any route is tried, and the call
holds its place until it ends.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping, Sequence

from services.runtime.config_pstn import ANONYMOUS, RouteEntry, apply_digits
from services.runtime.logs import call_log
from services.runtime.text import printable
from services.sipgw import sdp
from services.sipgw.auth.digest import DigestError
from services.sipgw.challenged import with_credentials
from services.sipgw.fork import Branch
from services.sipgw.providers import ProviderLink, Providers
from services.sipgw.routing import ALLOW, Failure, Outgoing, Router
from services.sipgw.sip import Request, Response, parse_uri
from services.sipgw.sip.dialog import new_tag
from services.sipgw.sip.headers import Headers
from services.sipgw.sip.transaction import new_branch
from services.sipgw.sip.transport import Link
from services.sipgw.toll import TRUNK, TollGuard
from services.sipgw.trunk_lines import NoLineFree

_log = logging.getLogger(__name__)

NOT_FOUND = (404, "Not Found")
FAIL_OVER = (408, 500, 502, 503, 504)  # answers after which the next route is tried


@dataclasses.dataclass(frozen=True)
class OwnRoute:
    entry: RouteEntry
    pattern: re.Pattern[str]
    provider: ProviderLink


class External:
    def __init__(
        self,
        router: Router,
        routes: Sequence[RouteEntry],
        providers: Providers,
        guard: TollGuard,
        departments: Mapping[str, str] | None = None,
    ):
        self.router = router
        self.providers = providers
        self.guard = guard
        self.departments = departments or {}  # own number -> its department (for caller ids)
        self.rules = [(re.compile(r.pattern), r) for r in routes if not r.provider]
        own = []
        for route in sorted((r for r in routes if r.provider), key=lambda r: r.priority):
            link = providers.named(route.provider)
            if link is not None:
                own.append(OwnRoute(route, re.compile(route.pattern), link))
        self.own = own

    def normalise(self, number: str) -> str:
        """The number as this server's first matching dialing rule rewrites it."""
        for pattern, rule in self.rules:
            if pattern.fullmatch(number):
                return apply_digits(number, rule.strip, rule.prepend)
        return number

    def own_routes(self, number: str) -> list[OwnRoute]:
        """This server's routes for ``number``, providers that can take calls now first."""
        found = [r for r in self.own if r.pattern.fullmatch(number)]
        return sorted(found, key=lambda r: not r.provider.up)

    def branches(self, number: str, out: Outgoing) -> list[Branch] | Failure:
        dialed = self.normalise(number)
        own = self.own_routes(dialed)
        plan = self.router.plan
        remote = [] if out.origin == TRUNK or plan is None else plan.external_for(dialed)
        if not own and not remote:
            return NOT_FOUND
        admitted = self.guard.admit(out.caller, out.origin, out.source, dialed)
        if isinstance(admitted, tuple):
            return admitted
        steps: list[Callable[[], Branch | Failure]] = [
            lambda r=route: self._provider_branch(r, dialed, out)  # type: ignore[misc]
            for route in own
        ]
        servers: list[str] = []
        for route in remote:
            if route.server_id not in servers:
                servers.append(route.server_id)
                steps.append(lambda r=route: self.router.trunk_branch(r.trunk_address, r.server_id, dialed, out))  # type: ignore[misc]
        chain = Chain(steps, admitted, out.correlation, self.providers)
        first = chain.first()
        if isinstance(first, tuple):
            return first
        return [first]

    def _provider_branch(self, route: OwnRoute, number: str, out: Outgoing) -> Branch | Failure:
        provider = route.provider
        if not provider.targets:
            return (503, f"Service Unavailable (provider {provider.name} has no address)")
        if not provider.up:
            # Registered with, but the binding does not hold (a refused password, say), or it
            # asked for a rest (503 with Retry-After): nothing goes to it until then, and the call
            # tries the next route.
            why = "asked for no calls for a while" if provider.resting else "is not registered"
            return (503, f"Service Unavailable (provider {provider.name} {why})")
        link = self.router.phone_links.get(provider.targets[0].transport) or self.router.phone_links.get("UDP")
        if link is None:
            return (503, "Service Unavailable (the SIP port is not open)")
        try:
            provider.lines.take(outgoing=True)
        except NoLineFree as error:
            return (503, f"Service Unavailable (provider {provider.name}: {error})")
        target = provider.targets[0]
        dialed = apply_digits(number, route.entry.strip, route.entry.prepend)
        shown = self.caller_id(route.entry, out.caller)
        request = provider_invite(provider, dialed, shown, link, out)
        provider.calls_out += 1

        def release() -> None:
            provider.lines.give_back(outgoing=True)

        branch = Branch(
            request, (target.host, target.port), link, release=release, provider=provider.name, codecs=provider.codecs
        )
        call_log(_log, out.correlation).info("goes out through provider %s as %s", provider.name, dialed)
        return branch

    def caller_id(self, route: RouteEntry, caller: str) -> str:
        department = self.departments.get(caller, "")
        if not department and self.router.plan is not None:
            found = self.router.plan.resolve(caller)
            department = found.department_id if found is not None else ""
        for entry in route.caller_ids:
            if entry.number == caller or (entry.department and entry.department == department):
                return entry.caller_id
        return route.caller_id or caller


class Chain:
    """One branch that tries a list of routes in turn, and answers its provider's challenges."""

    def __init__(
        self,
        steps: list[Callable[[], Branch | Failure]],
        give_back: Callable[[], None],
        correlation: str,
        providers: Providers,
    ):
        self.steps = steps
        self.give_back = give_back  # the toll guard's place of the call
        self.correlation = correlation
        self.providers = providers
        self.current: Branch | None = None
        self.answered_nonces: set[str] = set()

    def first(self) -> Branch | Failure:
        found = self._next()
        if isinstance(found, tuple):
            self.give_back()
            return found
        found.retry = self.retry
        line = found.release

        def release() -> None:
            current = self.current
            if current is not None and current.line is not None:
                current.line()
                current.line = None
            self.give_back()

        found.line = line
        found.release = release
        return found

    def _next(self) -> Branch | Failure:
        failure: Failure = (503, "Service Unavailable (no route to the outside takes the call)")
        while self.steps:
            made = self.steps.pop(0)()
            if isinstance(made, tuple):
                call_log(_log, self.correlation).info("external route skipped: %d %s", *made)
                failure = made
                continue
            self.current = made
            self.answered_nonces.clear()
            return made
        return failure

    def retry(self, branch: Branch, status: int, response: Response | None) -> bool:
        if status in (401, 407) and response is not None and branch.provider:
            return self._authenticate(branch, response)
        if status not in FAIL_OVER:
            return False
        if branch.provider:
            failed = self.providers.named(branch.provider)
            if failed is not None:
                failed.failovers += 1
                if status == 503 and response is not None:
                    failed.rest(response.headers.get("Retry-After"))
        if branch.line is not None:
            branch.line()  # the line of the route that refused
            branch.line = None
        # The offer, as the media plane rewrote it for the first route, before any provider's
        # codecs limited it.
        offer, content_type = branch.offer or branch.request.body, branch.request.headers.get("Content-Type")
        while True:
            found = self._next()
            if isinstance(found, tuple):
                return False
            body = sdp.limit_offer(offer, content_type, found.codecs)
            if body is not None:
                break
            call_log(_log, self.correlation).info("provider %s takes none of the codecs offered", found.provider)
            found.released()
        call_log(_log, self.correlation).info("route refused with %d: trying the next one", status)
        branch.request, branch.address, branch.link = found.request, found.address, found.link
        branch.request.body, branch.offer = body, offer
        if content_type:
            branch.request.headers.set("Content-Type", content_type)
        branch.over_trunk, branch.peer_server_id, branch.provider, branch.codecs = (
            found.over_trunk,
            found.peer_server_id,
            found.provider,
            found.codecs,
        )
        branch.line = found.release
        return True

    def _authenticate(self, branch: Branch, response: Response) -> bool:
        """RFC 3261 22.2: the same INVITE again, with credentials, once per challenge."""
        provider = self.providers.named(branch.provider)
        if provider is None or not provider.entry.username:
            return False
        request = branch.request
        try:
            again = with_credentials(
                request,
                response,
                provider.entry.username,
                provider.entry.password.value,
                request.cseq.number + 1,
                self.answered_nonces,
            )
        except DigestError as error:
            call_log(_log, self.correlation).warning("provider %s: cannot answer it: %s", provider.name, error)
            return False
        if again is None:
            call_log(_log, self.correlation).warning("provider %s refused our credentials", provider.name)
            return False
        branch.request = again
        return True


def provider_invite(provider: ProviderLink, dialed: str, caller_id: str, link: Link, out: Outgoing) -> Request:
    """The INVITE to a provider: its domain in the URIs, the caller id the route says."""
    local = f"{link.local[0]}:{link.local[1]}"
    target = provider.targets[0]
    domain = provider.domain
    port = f":{target.port}" if domain == target.host or provider.entry.address.endswith(f":{target.port}") else ""
    host = f"[{domain}]" if ":" in domain else domain
    headers = Headers()
    headers.add("Via", f"SIP/2.0/{link.name} {local};branch={new_branch()};rport")
    headers.add("Max-Forwards", str(out.max_forwards))
    if caller_id == ANONYMOUS:
        headers.add("From", f'"Anonymous" <sip:anonymous@anonymous.invalid>;tag={new_tag()}')
        headers.add("Privacy", "id")
    else:
        display = printable(out.display).replace('"', "").strip() if out.display else ""
        name = f'"{display}" ' if display else ""
        headers.add("From", f"{name}<sip:{caller_id}@{host}>;tag={new_tag()}")
        headers.add("P-Asserted-Identity", f"<sip:{caller_id}@{host}>")
    headers.add("To", f"<sip:{dialed}@{host}>")
    headers.add("Call-ID", f"{new_tag()}{new_tag()}@{local}")
    headers.add("CSeq", "1 INVITE")
    user = "anonymous" if caller_id == ANONYMOUS else caller_id
    headers.add("Contact", f"<sip:{user}@{local}>")
    headers.add("Allow", ALLOW)
    if out.content_type and out.body:
        headers.add("Content-Type", out.content_type)
    return Request("INVITE", parse_uri(f"sip:{dialed}@{host}{port}"), headers, out.body)
