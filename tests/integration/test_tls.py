"""The connector over TLS: etcd serves HTTPS with a certificate from a test CA."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.runtime.embedded_etcd import EmbeddedEtcd
from tests.support import Group, has_numbers, wait_for


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cwd, timeout=60)


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[tuple[EmbeddedEtcd, Path]]:
    pki = tmp_path / "pki"
    pki.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=pbxmesh test CA", cwd=pki)  # fmt: skip
    (pki / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "etcd.key", "-out", "etcd.csr",
             "-subj", "/CN=localhost", cwd=pki)  # fmt: skip
    _openssl("x509", "-req", "-in", "etcd.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "etcd.pem", "-days", "2", "-extfile", "san.cnf", cwd=pki)  # fmt: skip
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.pem",
             "-days", "2", "-subj", "/CN=some other CA", cwd=pki)  # fmt: skip
    etcd = EmbeddedEtcd(tls=(pki / "etcd.pem", pki / "etcd.key", pki / "ca.pem"))
    etcd.start()
    try:
        yield etcd, pki
    finally:
        etcd.close()


async def test_servers_join_over_tls(tls_etcd: tuple[EmbeddedEtcd, Path], tmp_path: Path) -> None:
    etcd, pki = tls_etcd
    group = Group(etcd.endpoint, tmp_path, name="tls")
    tls = {"ca_file": str(pki / "ca.pem"), "server_name": "localhost"}
    try:
        alpha = await group.start("alpha", ["100"], connector={"tls": tls})
        beta = await group.start("beta", ["200"], connector={"tls": tls})
        await wait_for(lambda: has_numbers(alpha, {"200"}), what="beta's number on alpha over TLS")
        assert (await beta.members()).connected

        # A server that does not trust the CA cannot join, and says so without crashing.
        stranger = await group.start("gamma", ["300"], connector={"tls": {"ca_file": str(pki / "other.pem")}})
        members = await stranger.members()
        assert not members.connected
        assert await stranger.owners() == {"300": "gamma"}
        assert await alpha.resolve("300") is None
    finally:
        await group.close()
