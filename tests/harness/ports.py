"""Port ranges of test processes, all below the kernel's ephemeral range (32768 and up).

``make test`` runs test files in parallel processes (pytest-xdist workers gw0, gw1, ...): each
takes its own share of every range, so no two hand out the same port while the first owner has
yet to bind it. A lone pytest takes a share by its pid.

    10000-17999  free_port: SIP, gRPC, etcd, metrics, tools' own ports
    18000-25999  phones' RTP (tests/harness/baresip.py)
    26000-32767  media services' RTP (tests/harness/site.py)
"""

from __future__ import annotations

import os

SHARES = 4  # the most workers that get a share of their own (`make test` runs fewer)


def index() -> int:
    """This process's share: its xdist worker number, or its pid's."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        return int(worker[2:]) % SHARES
    return os.getpid() % SHARES


def share(start: int, stop: int) -> range:
    """This process's share of ``range(start, stop)``."""
    size = (stop - start) // SHARES
    first = start + index() * size
    return range(first, first + size)
