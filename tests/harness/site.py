"""A server "site" for tests: its registry, its SIP gateway and (by default) its callstate, on
one config file written for the test, every port fixed and free."""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from services.runtime.config import load_config
from tests.harness import ports
from tests.harness.config import accounts_section, loopback
from tests.harness.process import child_env
from tests.harness.servers import CallState, Gateway, Group, Media, Server, has_numbers, start_gateway, stop_gateway
from tests.harness.tls import secure, server_tls
from tests.harness.wait import wait_for

SECRET = "the-group-trunk-secret-2026"
# Media services' RTP ports: this test process's share (tests/harness/ports.py), RTP_PORTS a site.
RTP_PORTS = 200
_RTP_SHARE = ports.share(26000, 32768)
_rtp_ranges = itertools.cycle(range(_RTP_SHARE.start, _RTP_SHARE.stop - RTP_PORTS + 1, RTP_PORTS))


class Spec(NamedTuple):
    """A site to make: its first phone account, its department, more accounts, its environment,
    and what else its config says. Without ``department`` its numbers carry none; ``numbers``
    and ``departments``, when given, replace the ones made from the accounts."""

    account: tuple[str, str]
    department: str = ""
    more: tuple[tuple[str, str], ...] = ()
    env: dict[str, str] | None = None
    callstate: bool = True
    lines: int = 4
    numbers: list[str | dict[str, str]] | None = None
    departments: list[dict[str, str]] | None = None
    scenarios: dict[str, Any] | None = None
    trunk: str = ""
    advertise: str = ""
    lease_ttl: int = 2
    media: bool = False  # a media service beside the gateway, recording calls
    tls: bool = False  # mutual TLS on every gRPC port and link (the group's CA in the group's folder)
    require_tls: bool = False  # phones only over SIP over TLS (listen.sips, which tls opens)
    extra: dict[str, Any] | None = None  # further config sections, as given (``probes``)


@dataclass
class Site:
    registry: Server
    gateway: Gateway
    optional_callstate: CallState | None
    trunk: str
    optional_media: Media | None = None

    @property
    def callstate(self) -> CallState:
        assert self.optional_callstate is not None, f"{self.registry.id} runs no callstate"
        return self.optional_callstate

    @property
    def media(self) -> Media:
        assert self.optional_media is not None, f"{self.registry.id} runs no media service"
        return self.optional_media


async def make_site(group: Group, server_id: str, spec: Spec) -> Site:
    """Writes the site's config, then starts its registry, its callstate and its gateway in that
    order (the gateway's call reports find the callstate at once), each once the one before serves."""
    phones = (spec.account, *spec.more)
    trunk = spec.trunk or loopback()
    listen = {"registry": "127.0.0.1:0", "sip": "127.0.0.1:0", "sipgw": "127.0.0.1:0", "trunk": trunk}
    if spec.callstate:
        listen["callstate"] = "127.0.0.1:0"
    extra: dict[str, Any] = {"sip": accounts_section(phones), "trunk": {"secret": SECRET, "lines": spec.lines}}
    if spec.scenarios:
        extra["scenarios"] = spec.scenarios
    if spec.advertise:
        extra["advertise"] = {"trunk": spec.advertise}
    if spec.media:
        listen["media"] = "127.0.0.1:0"
        first = next(_rtp_ranges)
        extra["media"] = {"rtp_address": "127.0.0.1", "rtp_ports": f"{first}-{first + RTP_PORTS - 1}"}
        extra["recording"] = {"dir": str(group.tmp / f"{server_id}-recordings")}
    if spec.tls:
        extra["tls"] = server_tls(group.tmp / "pki", server_id)
        listen["sips"] = "127.0.0.1:0"
        extra["sip"]["require_tls"] = spec.require_tls
    extra.update(spec.extra or {})
    numbers: list[str | dict[str, str]]
    departments = spec.departments
    if spec.numbers is not None:
        numbers = list(spec.numbers)
    elif spec.department:
        numbers = [{"number": n, "name": f"{server_id} phone {n}", "department": spec.department} for n, _ in phones]
        departments = departments or [{"id": spec.department, "name": spec.department.title()}]
    else:
        numbers = [n for n, _ in phones]
    server = group.server(
        server_id, numbers, departments=departments, listen=listen, extra=extra, lease_ttl=spec.lease_ttl, env=spec.env
    )
    if spec.tls:
        listen_at = load_config(server.config_path, environ=child_env(spec.env)).listen
        secure([listen_at.registry, listen_at.sipgw, listen_at.callstate, listen_at.media], group.tmp / "pki")
    await server.start()
    callstate = CallState(server.config_path, env=spec.env) if spec.callstate else None
    media = Media(server.config_path, env=spec.env) if spec.media else None
    try:
        if callstate is not None:
            await callstate.start()
        if media is not None:
            await media.start()
        return Site(server, await start_gateway(server.config_path, spec.env), callstate, trunk, media)
    except BaseException:
        if callstate is not None:
            await callstate.stop()
        if media is not None:
            await media.stop()
        raise


async def stop_sites(*sites: Site) -> None:
    """Stops what make_site started beside the registry (the group stops the registries)."""
    for site in sites:
        await stop_gateway(site.gateway)
        if site.optional_callstate is not None:
            await site.optional_callstate.stop()
        if site.optional_media is not None:
            await site.optional_media.stop()


@contextlib.asynccontextmanager
async def running_sites(
    group: Group, specs: dict[str, Spec], plans: dict[str, set[str]] | None = None
) -> AsyncIterator[dict[str, Site]]:
    """The sites, made in order; once each named in ``plans`` has those numbers of the others in
    its plan, they are handed over, and stopped afterwards."""
    made: dict[str, Site] = {}
    try:
        for name, spec in specs.items():
            made[name] = await make_site(group, name, spec)
        for name, numbers in (plans or {}).items():
            await wait_for(functools.partial(has_numbers, made[name].registry, numbers), what=f"the plan on {name}")
        yield made
    finally:
        await stop_sites(*made.values())


def logs_of(*sites: Site, lines: int = 30) -> str:
    """The last lines each site's gateway and callstate logged, for a failing test's message."""
    return "".join(
        line
        for site in sites
        for line in site.gateway.log[-lines:]
        + (site.callstate.log[-lines:] if site.optional_callstate else [])
        + (site.media.log[-lines:] if site.optional_media else [])
    )
