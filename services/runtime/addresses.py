"""``host:port`` addresses as written in configs, member records and the API: one way to read them.

The port is what follows the last colon; an IPv6 host is written in brackets (``[::1]:5060``),
and comes out without them, as the sockets want it.
"""

from __future__ import annotations

import re

_PORT_RE = re.compile(r"[0-9]+")  # ASCII digits only: int() takes the digits of other scripts too
MAX_PORT = 65535


def parse_host_port(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port); raises ValueError saying what is wrong.

    Port 0 is accepted (binding it picks a free port).
    """
    host, colon, port = text.rpartition(":")
    if not colon or not port:
        raise ValueError(f"{text!r} is not host:port (no port)")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise ValueError(f"{text!r} is not host:port (unbalanced brackets around the host)")
        host = host[1:-1]
    if not host:
        raise ValueError(f"{text!r} is not host:port (no host)")
    if not _PORT_RE.fullmatch(port):
        raise ValueError(f"{text!r} is not host:port (port {port!r} is not a number)")
    if int(port) > MAX_PORT:
        raise ValueError(f"{text!r} is not host:port (port {port} is out of range 0-{MAX_PORT})")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    """The other way: ``host:port``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
