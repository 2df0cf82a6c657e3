"""Config files written for a test, a bench or a local group: every listen port fixed before start.

A service's readiness is asked at the address its config gives, so a port left at 0 here is
replaced by a free one (``free_port``: free for TCP and UDP, as SIP takes both).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from services.runtime.embedded_etcd import free_port


def loopback() -> str:
    """A free 127.0.0.1 address."""
    return f"127.0.0.1:{free_port()}"


def fixed_ports(listen: Mapping[str, str]) -> dict[str, str]:
    """``listen`` with each ``host:0`` address given a free port."""
    return {key: f"{a.rpartition(':')[0]}:{free_port()}" if a.endswith(":0") else a for key, a in listen.items()}


def accounts_section(accounts: tuple[tuple[str, str], ...], **sip: Any) -> dict[str, Any]:
    """The ``sip`` section for these (number, password) phone accounts and further keys. A test's
    gateway drains for 2 s at SIGTERM, not the production default: a teardown with a call left up
    does not wait for it."""
    return {"accounts": [{"number": n, "password": p} for n, p in accounts], "drain_seconds": 2, **sip}


def write_config(path: Path, document: Mapping[str, Any]) -> Path:
    """Writes ``document`` as YAML, its listen ports fixed first; returns ``path``."""
    document = dict(document)
    if "listen" in document:
        document["listen"] = fixed_ports(document["listen"])
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def lone_gateway_config(
    tmp_path: Path, accounts: tuple[tuple[str, str], ...], sip: dict[str, object] | None = None, **extra: object
) -> Path:
    """The config of a gateway of its own (server alpha, no etcd) with these phone accounts;
    ``sip`` adds keys to the sip section."""
    return write_config(
        tmp_path / "alpha.yaml",
        {
            "server": {"id": "alpha", "name": "Alpha office"},
            "listen": {"registry": "127.0.0.1:0", "sip": "127.0.0.1:0", "sipgw": "127.0.0.1:0"},
            "numbering": {"numbers": [{"number": n} for n, _ in accounts]},
            "sip": accounts_section(accounts, **(sip or {})),
            **extra,
        },
    )
