"""The group CA (pki.py), the ``tls`` config section, and who may call what (access.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from services.runtime.access import Guard
from services.runtime.config import ConfigError, load_config
from services.runtime.errors import PermissionDenied, Unauthenticated
from services.runtime.pki import Identity, PkiError, check_pair, identity_of, init_ca, issue


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    folder = tmp_path / "pki"
    init_ca(folder, "main")
    return folder


def pems(pki: Path, stem: str, ca: Path | None = None) -> tuple[bytes, bytes, bytes]:
    return (
        ((ca or pki) / "ca.pem").read_bytes(),
        (pki / f"{stem}.pem").read_bytes(),
        (pki / f"{stem}-key.pem").read_bytes(),
    )


def test_certificates_name_servers_and_clients(pki: Path) -> None:
    issue(pki, "server", "alpha", hosts=("127.0.0.1", "alpha.office.example"))
    issue(pki, "client", "crm", role="control")
    assert check_pair(*pems(pki, "alpha")) == Identity("server", "alpha")
    assert check_pair(*pems(pki, "client-crm")) == Identity("client", "crm", "control")
    assert stat.S_IMODE((pki / "alpha-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((pki / "ca-key.pem").stat().st_mode) == 0o600


def test_what_does_not_check_is_named(pki: Path, tmp_path: Path) -> None:
    issue(pki, "server", "alpha")
    issue(pki, "server", "beta")
    other = tmp_path / "other"
    init_ca(other, "other")
    ca, cert, _key = pems(pki, "alpha")
    with pytest.raises(PkiError, match="not the certificate's"):
        check_pair(ca, cert, (pki / "beta-key.pem").read_bytes())
    with pytest.raises(PkiError, match="no CA of ca_file signed"):
        check_pair((other / "ca.pem").read_bytes(), cert, (pki / "alpha-key.pem").read_bytes())
    # Two CAs in one file (a change of CA): either one will do.
    assert check_pair((other / "ca.pem").read_bytes() + ca, cert, (pki / "alpha-key.pem").read_bytes())
    with pytest.raises(PkiError, match="exists already"):
        init_ca(pki, "main")
    with pytest.raises(PkiError, match="role"):
        issue(pki, "client", "crm", role="admin")
    with pytest.raises(PkiError, match="name"):
        issue(pki, "server", "Alpha_1")


def test_identity_needs_exactly_one_pbxmesh_name() -> None:
    assert identity_of(["urn:pbxmesh:server:alpha"]) == Identity("server", "alpha")
    assert identity_of(["urn:pbxmesh:client:read:dash"]) == Identity("client", "dash", "read")
    assert identity_of(["urn:pbxmesh:client:root:dash"]) is None
    assert identity_of(["urn:pbxmesh:server:alpha", "urn:pbxmesh:server:beta"]) is None
    assert identity_of(["https://example.com", "urn:pbxmesh:server:Alpha"]) is None


def config_with_tls(tmp_path: Path, pki: Path, server_id: str, stem: str) -> Path:
    path = tmp_path / "server.yaml"
    path.write_text(
        f"server: {{id: {server_id}}}\n"
        f"tls: {{ca_file: {pki / 'ca.pem'}, cert_file: {pki / (stem + '.pem')},"
        f" key_file: {pki / (stem + '-key.pem')}}}\n"
    )
    return path


def test_the_tls_section_must_be_this_servers_certificate(pki: Path, tmp_path: Path) -> None:
    issue(pki, "server", "alpha")
    issue(pki, "client", "crm", role="read")
    assert load_config(config_with_tls(tmp_path, pki, "alpha", "alpha")).tls.enabled
    with pytest.raises(ConfigError, match=r"tls\.cert_file: the certificate is for server alpha, this is server beta"):
        load_config(config_with_tls(tmp_path, pki, "beta", "alpha"))
    with pytest.raises(ConfigError, match=r"tls\.cert_file: the certificate is for client crm"):
        load_config(config_with_tls(tmp_path, pki, "crm", "client-crm"))
    only_ca = tmp_path / "only-ca.yaml"
    only_ca.write_text(f"server: {{id: alpha}}\ntls: {{ca_file: {pki / 'ca.pem'}}}\n")
    with pytest.raises(ConfigError, match=r"tls\.cert_file: required with tls\.ca_file"):
        load_config(only_ca)
    missing = tmp_path / "missing.yaml"
    missing.write_text(
        f"server: {{id: alpha}}\ntls: {{ca_file: {pki / 'ca.pem'}, cert_file: /nope.pem, key_file: /nope}}\n"
    )
    with pytest.raises(ConfigError, match=r"tls\.cert_file: cannot read '/nope.pem'"):
        load_config(missing)


class Context:
    """What the guard reads of an RPC's context."""

    def __init__(self, *uris: str):
        self.uris = [uri.encode() for uri in uris]

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"peer_uri": self.uris} if self.uris else {}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"


READ = "/pbxmesh.registry.v1.RegistryService/ListNumbers"
UPSERT = "/pbxmesh.registry.v1.RegistryService/UpsertNumber"
SHARE = "/pbxmesh.callstate.v1.CallStateService/ShareParty"
ATTACH = "/pbxmesh.media.v1.MediaService/Attach"
HEALTH = "/grpc.health.v1.Health/Check"


@pytest.mark.parametrize(
    ("uri", "method", "allowed"),
    [
        ("urn:pbxmesh:server:alpha", ATTACH, True),  # this server's own services: everything
        ("urn:pbxmesh:server:alpha", UPSERT, True),
        ("urn:pbxmesh:server:beta", SHARE, True),  # a live member: what servers ask of each other
        ("urn:pbxmesh:server:beta", READ, False),
        ("urn:pbxmesh:server:beta", ATTACH, False),
        ("urn:pbxmesh:server:delta", SHARE, False),  # not a live member
        ("urn:pbxmesh:client:read:dash", READ, True),
        ("urn:pbxmesh:client:read:dash", UPSERT, False),
        ("urn:pbxmesh:client:control:crm", UPSERT, True),
        ("urn:pbxmesh:client:control:crm", SHARE, False),
        ("urn:pbxmesh:client:control:crm", ATTACH, False),
    ],
)
def test_who_may_call_what(uri: str, method: str, allowed: bool) -> None:
    guard = Guard("alpha", lambda server_id: server_id in {"alpha", "beta"})
    if allowed:
        assert guard.check(Context(uri), method) is not None  # type: ignore[arg-type]
    else:
        with pytest.raises(PermissionDenied):
            guard.check(Context(uri), method)  # type: ignore[arg-type]
        assert sum(guard.refused.values()) == 1


def test_a_certificate_naming_no_one_is_unauthenticated_and_health_is_open() -> None:
    guard = Guard("alpha")
    with pytest.raises(Unauthenticated):
        guard.check(Context("https://example.com"), READ)  # type: ignore[arg-type]
    assert guard.check(Context(), HEALTH) is None  # type: ignore[arg-type]
    assert guard.counts() == [(1.0, {"status": "UNAUTHENTICATED", "method": READ})]
