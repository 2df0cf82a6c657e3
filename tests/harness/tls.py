"""The group CA of a test run, the TLS sections of its servers, and channels that present the
harness's own client certificate (role control) to the ports that take mutual TLS only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc
import grpc.aio

from services.runtime.pki import init_ca, issue

# Addresses of ports that take TLS: the CA directory that signed their servers' certificates, and
# the client certificate there that the harness presents.
_secured: dict[str, tuple[Path, str]] = {}


def group_pki(folder: Path) -> Path:
    """A CA in ``folder`` (made once), with the harness's client certificate beside it."""
    if not (folder / "ca.pem").exists():
        init_ca(folder, "test")
        issue(folder, "client", "harness", role="control")
    return folder


def server_tls(folder: Path, server_id: str) -> dict[str, str]:
    """The ``tls`` section of ``server_id``'s config: its certificate names it and 127.0.0.1."""
    pki = group_pki(folder)
    cert, key = issue(pki, "server", server_id, hosts=("127.0.0.1",))
    return {"ca_file": str(pki / "ca.pem"), "cert_file": str(cert), "key_file": str(key)}


def secure(addresses: Sequence[str], pki: Path, client: str = "harness") -> None:
    """From now on the harness reaches these addresses with TLS (the CA in ``pki``, presenting
    ``client-<client>.pem``)."""
    for address in addresses:
        if address:
            _secured[address] = (pki, client)


def credentials(pki: Path, client: str = "harness") -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (pki / "ca.pem").read_bytes(),
        (pki / f"client-{client}-key.pem").read_bytes(),
        (pki / f"client-{client}.pem").read_bytes(),
    )


def channel(address: str, options: Sequence[tuple[str, str | int]] = ()) -> grpc.aio.Channel:
    """A channel to ``address``: TLS with the harness's certificate if its port takes TLS."""
    found = _secured.get(address)
    if found is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, credentials(*found), options=list(options))
