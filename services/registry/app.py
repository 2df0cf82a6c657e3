"""One server's registry: config in, gRPC API up, group link kept, lease revoked on the way out."""

from __future__ import annotations

import asyncio
import logging

from services.registry.membership import DuplicateServerId, GroupLink
from services.registry.plan import PlanView
from services.registry.records import ExternalRecord, KeyLayout, MemberInfo, NumberRecord
from services.registry.service import RegistryService
from services.runtime.config import Config
from services.runtime.etcd import EtcdConnector
from services.runtime.grpc_server import count_refusals, service_host
from services.runtime.metrics import Metrics

_log = logging.getLogger(__name__)

# Health name of the group part: SERVING while this server is a live member of its group.
GROUP_HEALTH = "pbxmesh.registry.v1.Group"
DRAIN_SECONDS = 2.0


class RegistryApp:
    """Builds and runs the registry of one server."""

    def __init__(self, config: Config):
        self.config = config
        self.host = service_host(config, config.listen.registry, probe=config.probes.registry)
        self.etcd = EtcdConnector(config.connector)
        self.view: PlanView | None = None
        self.link: GroupLink | None = None
        self.failed = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        self.host.bind()
        local = MemberInfo(
            server_id=cfg.server.id,
            name=cfg.server.name or cfg.server.id,
            registry_address=self.host.address,
            # The gateway of this server takes trunk calls there (same config file, same server).
            trunk_address=cfg.advertise.trunk or cfg.listen.trunk,
            # Other servers' callstates share a call's parties with this server's there.
            callstate_address=cfg.advertise.callstate or cfg.listen.callstate,
        )
        view = PlanView(local)
        with view.batch():
            for dep in cfg.numbering.departments:
                view.set_department(local.server_id, dep.id, dep.name or dep.id)
            for n in cfg.numbering.numbers:
                view.set_number(local.server_id, NumberRecord(n.number, n.name, n.department, n.kind))
            # Routes through one of this server's providers are offered to the group; dialing
            # rules without a provider stay local.
            view.set_external(
                local.server_id,
                tuple(
                    ExternalRecord(r.pattern, r.provider, r.priority, i) for i, r in enumerate(cfg.routes) if r.provider
                ),
            )
        link = GroupLink(
            self.etcd,
            KeyLayout(cfg.connector.group),
            view,
            local,
            cfg.connector.lease_ttl,
            self._group_health,
        )
        self.view, self.link = view, link
        self._measure(view, link)
        link.failed = self.failed
        self.host.add(RegistryService(view, link))
        # Join and read the group before serving, so that the first answers hold the whole plan
        # (if etcd does not answer, the server starts alone and joins later).
        await self.etcd.connect()
        await link.start()
        await self.host.start()
        await self.host.set_health(GROUP_HEALTH, view.connected)
        _log.info(
            "registry of %s (%s) listening on %s, group %r",
            local.server_id,
            local.name,
            self.host.address,
            cfg.connector.group,
        )

    def _measure(self, view: PlanView, link: GroupLink) -> None:
        m = Metrics("registry", self.config.server.id, self.config.telemetry.metrics.registry)
        count_refusals(self.host, m)
        m.gauge("pbxmesh.group.members", "live members of the group", lambda: [(len(view.live_members()), {})])
        m.gauge("pbxmesh.group.connected", "1 while this server is a live member", lambda: [(int(view.connected), {})])
        m.gauge("pbxmesh.plan.numbers", "numbers in the merged plan", lambda: [(len(view.routes), {})])
        m.gauge(
            "pbxmesh.plan.conflicts", "numbers claimed by more than one server", lambda: [(len(view.conflicts()), {})]
        )
        m.counter_of(
            "pbxmesh.etcd.keepalive_failures", "lease keepalives that failed", lambda: [(link.keepalive_failures, {})]
        )
        self.metrics = m

    async def _group_health(self, connected: bool) -> None:
        await self.host.set_health(GROUP_HEALTH, connected)

    async def stop(self, graceful: bool) -> None:
        """Leaves the group first (peers drop our numbers at once), then stops serving."""
        if self.link is not None:
            await self.link.leave()
        await self.host.stop(DRAIN_SECONDS if graceful else 0)
        await self.etcd.close()


__all__ = ["GROUP_HEALTH", "DuplicateServerId", "RegistryApp"]
