"""Simulated servers for the sync section: leases and keys written with the registry's own code.

99 registry processes would not fit on a small machine next to etcd; what the real registry has to
read is the same either way: a member key and numbers per server, each bound to a live lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

from bench._harness import BenchError, Params, bounded
from services.registry.records import KeyLayout, MemberInfo, NumberRecord, encode_member, encode_number
from services.runtime.config import ConnectorSection
from services.runtime.etcd import EtcdConnector, LeaseSession


@dataclasses.dataclass
class SimGroup:
    connector: EtcdConnector
    sessions: list[LeaseSession]

    @property
    def lost(self) -> int:
        return sum(1 for s in self.sessions if s.lost.is_set())

    @property
    def keepalive_failures(self) -> int:
        return sum(s.keepalive_failures for s in self.sessions)


def sim_number(server: int, j: int) -> str:
    return f"2{server:03d}{j:04d}"


async def populate(params: Params, etcd_endpoint: str, group: str) -> SimGroup:
    """Writes every simulated server: lease (kept alive by this process), member key, numbers."""
    settings = ConnectorSection(endpoints=(etcd_endpoint,), group=group, lease_ttl=params.sim_lease_ttl)
    connector = EtcdConnector(settings, call_timeout=10.0)
    await connector.connect()
    layout = KeyLayout(group)
    sim = SimGroup(connector, [])
    limit = asyncio.Semaphore(8)  # etcd on a small machine answers no faster with more writers

    async def one(i: int) -> None:
        sid = f"sim-{i:03d}"
        async with limit:
            session = await LeaseSession.open(connector, params.sim_lease_ttl)
            sim.sessions.append(session)
            info = MemberInfo(
                server_id=sid,
                name=f"Simulated {i}",
                registry_address=f"127.0.0.1:{20000 + i}",
                trunk_address=f"127.0.0.1:{30000 + i}",
            )
            if await connector.create(layout.member(sid), encode_member(info), session.lease_id) is not None:
                raise BenchError(f"member key of {sid} already exists")
            items = []
            for j in range(params.numbers_per_server):
                number = sim_number(i, j)
                record = NumberRecord(number=number, name=f"Sim {i} user {j}", kind="user")
                items.append((layout.number(sid, number), encode_number(record)))
            await connector.put_many(items, session.lease_id)

    try:
        await bounded(asyncio.gather(*(one(i) for i in range(1, params.sim_servers + 1))), 300, "populating etcd")
    except BaseException:
        await close_sim(sim)
        raise
    return sim


async def close_sim(sim: SimGroup) -> None:
    """Revokes every simulated lease, so their keys go at once."""
    with contextlib.suppress(Exception):
        await bounded(asyncio.gather(*(s.close() for s in sim.sessions), return_exceptions=True), 15, "revoking")
    with contextlib.suppress(Exception):
        await bounded(sim.connector.close(), 5, "closing the etcd connection")
