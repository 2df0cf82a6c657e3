"""In-process GroupLinks on a real etcd: a compacted watch leads to a full read, never a hang."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.registry import GroupLink, KeyLayout, MemberInfo, NumberRecord, PlanView
from services.runtime.config import ConnectorSection
from services.runtime.etcd import EtcdConnector, KeyValue, WatchLost
from tests.support import wait_for


class CompactingConnector(EtcdConnector):
    """Between its first full read and the watch that follows it, the group changes and etcd
    compacts past the read: the watch from the read's revision must come back canceled."""

    def __init__(self, settings: ConnectorSection, peer: GroupLink):
        super().__init__(settings)
        self.peer = peer
        self.reads = 0

    async def get_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        revision, kvs = await super().get_prefix(prefix)
        self.reads += 1
        if self.reads == 1:
            await self.peer.upsert_number(NumberRecord("299", "Added during the gap"))
            await self.peer.upsert_number(NumberRecord("297", "Also added during the gap"))
            latest, _ = await super().get_prefix(prefix)
            await self.compact(latest)
        return revision, kvs


async def _link(
    endpoint: str, group: str, server_id: str, numbers: list[str], etcd: EtcdConnector | None = None
) -> GroupLink:
    settings = ConnectorSection(endpoints=(endpoint,), group=group, lease_ttl=5)
    etcd = etcd or EtcdConnector(settings)
    await etcd.connect()
    local = MemberInfo(server_id, server_id.title())
    view = PlanView(local)
    for n in numbers:
        view.set_number(server_id, NumberRecord(n, f"{server_id}-{n}"))
    link = GroupLink(etcd, KeyLayout(group), view, local, 5)
    await link.start()
    return link


@pytest.fixture
async def peer(shared_etcd: str) -> AsyncIterator[GroupLink]:
    link = await _link(shared_etcd, "compaction", "beta", ["200"])
    yield link
    await link.leave()
    await link.etcd.close()


async def test_compacted_watch_leads_to_a_full_read(shared_etcd: str, peer: GroupLink) -> None:
    settings = ConnectorSection(endpoints=(shared_etcd,), group="compaction", lease_ttl=5)
    etcd = CompactingConnector(settings, peer)
    alpha = await _link(shared_etcd, "compaction", "alpha", ["100"], etcd)
    try:
        await wait_for(lambda: _sync(lambda: "299" in alpha.view.routes), what="299 after the resync")
        assert etcd.reads >= 2
        assert set(alpha.view.routes) == {"100", "200", "297", "299"}
        assert alpha.view.routes["299"].server_id == "beta"
        # And the feed keeps working after the resync.
        await peer.upsert_number(NumberRecord("298"))
        await wait_for(lambda: _sync(lambda: "298" in alpha.view.routes), what="298 through the new watch")
    finally:
        await alpha.leave()
        await etcd.close()


async def test_watch_from_a_compacted_revision_raises_watch_lost(shared_etcd: str) -> None:
    etcd = EtcdConnector(ConnectorSection(endpoints=(shared_etcd,)))
    await etcd.connect()
    try:
        lease, _ = await etcd.grant(5)
        await etcd.put("/pbxmesh/wl/a", b"1", lease)
        old, _ = await etcd.get_prefix("/pbxmesh/wl/")
        await etcd.put("/pbxmesh/wl/a", b"2", lease)
        latest, _ = await etcd.get_prefix("/pbxmesh/wl/")
        await etcd.compact(latest)
        with pytest.raises(WatchLost, match="compacted"):
            async with asyncio.timeout(5):
                async for _ in etcd.watch("/pbxmesh/wl/", old):
                    pass
        await etcd.revoke(lease)
    finally:
        await etcd.close()


async def _sync(check: object) -> bool:
    assert callable(check)
    return bool(check())
