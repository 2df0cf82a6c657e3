"""TLS for every gRPC link of a server: its services' ports, the links between them, the peers'.

With ``tls`` configured, every gRPC port of the server takes only TLS connections from clients
with a certificate of the group's CA (``pbxmesh ca``), and every link the server opens presents
its own certificate and checks the other end's: toward a service of its own server and toward a
peer, the host name checked is the server id the link is meant for, so a link to beta completes
with beta's certificate only. The files are read again when they change: a renewed certificate
(or a second CA added to ``ca_file`` during a change of CA) is used from the next connection on,
without a restart.

Health checks and reflection answer any client of the port (and clients without a certificate on
the plain-text probe port, services/runtime/grpc_server.py); everything else goes through
``Guard`` (services/runtime/access.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import grpc
import grpc.aio

from services.runtime.pki import Identity, PkiError, check_pair, identity_of

_log = logging.getLogger(__name__)

Options = Sequence[tuple[str, str | int]]


class TlsFiles:
    """A server's CA bundle, certificate and key, re-read when a file changes (which file the
    path leads to, its size or mtime)."""

    def __init__(self, ca_file: str | Path, cert_file: str | Path, key_file: str | Path):
        self.paths = (Path(ca_file), Path(cert_file), Path(key_file))
        self._lock = threading.Lock()  # the server's fetcher runs on gRPC's threads
        self._stamp: tuple[tuple[int, ...], ...] = ()
        self._pems: tuple[bytes, bytes, bytes] = (b"", b"", b"")
        self.identity: Identity | None = None
        self.version = 0  # how many times the files were read: channels opened before are renewed
        self.load()

    def _stamps(self) -> tuple[tuple[int, ...], ...]:
        # stat() follows symlinks: a Kubernetes Secret or ConfigMap volume renews its files by
        # pointing "..data" at a new folder, so the path leads to a new file (another inode),
        # which tells the change even where the new file has the old one's size and mtime.
        stamps = []
        for path in self.paths:
            st = os.stat(path)
            stamps.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def load(self) -> bool:
        """Reads the files if they changed since the last read; returns True if they did. Files
        that do not check (a half-written renewal) are ignored with an error log: the last good
        ones stay in use. The first read raises PkiError instead."""
        with self._lock:
            try:
                stamp = self._stamps()
            except OSError as error:
                if not self._stamp:
                    raise PkiError(f"{error.filename}: {error.strerror}") from None
                _log.error("TLS files: %s: %s; the loaded ones stay in use", error.filename, error.strerror)
                return False
            if stamp == self._stamp:
                return False
            try:
                ca, cert, key = (path.read_bytes() for path in self.paths)
                identity = check_pair(ca, cert, key)
            except (OSError, PkiError) as error:
                if not self._stamp:
                    raise PkiError(str(error)) from None
                _log.error("TLS files changed but do not check (%s); the loaded ones stay in use", error)
                return False
            changed = bool(self._stamp)
            self._stamp, self._pems, self.identity = stamp, (ca, cert, key), identity
            self.version += 1
        if changed:
            _log.info("TLS files reloaded (%s)", identity)
        return True

    @property
    def pems(self) -> tuple[bytes, bytes, bytes]:
        return self._pems

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for a port: client certificates required, files re-read on change."""
        ca, cert, key = self._pems

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            if not self.load():
                return None
            ca, cert, key = self._pems
            return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

        initial = grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)
        # The fetcher's None means "no change" (grpc's docs); the stubs want a configuration.
        fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], fetch)
        return grpc.dynamic_ssl_server_credentials(initial, fetcher, require_client_authentication=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        self.load()
        ca, cert, key = self._pems
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


# The process's own files and server id (each process runs one service of one server): every
# channel it opens follows them (``configure``, at the service's start).
_links: TlsFiles | None = None
_own_id = ""
_checked = 0.0


def configure(ca_file: str, cert_file: str, key_file: str, server_id: str) -> TlsFiles | None:
    """Sets the process's TLS files (None when ``ca_file`` is empty: plain links, as without TLS)."""
    global _links, _own_id
    _links = TlsFiles(ca_file, cert_file, key_file) if ca_file else None
    _own_id = server_id
    return _links


def links_version() -> int:
    """Changes when the process's TLS files do (re-read at most once a second here)."""
    global _checked
    if _links is None:
        return 0
    now = time.monotonic()
    if now - _checked >= 1.0:
        _checked = now
        _links.load()
    return _links.version


def open_channel(address: str, server_id: str = "", options: Options = ()) -> grpc.aio.Channel:
    """A channel to ``address``: plain without TLS files; with them, mutual TLS where the other
    end's certificate must name ``server_id`` (default: this server, for its own services)."""
    tls = _links
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    extra: list[tuple[str, str | int]] = [*options, ("grpc.ssl_target_name_override", server_id or _own_id)]
    return grpc.aio.secure_channel(address, tls.channel_credentials(), options=extra)


def peer_identity(context: grpc.aio.ServicerContext[object, object]) -> Identity | None:
    """Who the client's verified certificate names (None on a plain port or for a certificate that
    names no pbxmesh server or client)."""
    uris = context.auth_context().get("peer_uri", [])
    return identity_of([uri.decode(errors="replace") for uri in uris])
