"""The group's certificate authority: what ``pbxmesh ca`` makes and what the services check.

One CA per group signs a certificate per server and per API client. Who a certificate is for is
written as a URI in its subject alternative names, so that no field is read two ways:

- ``urn:pbxmesh:server:<server id>`` (and the DNS name ``<server id>``, which the services of a
  server and its peers verify as the TLS host name: a link to "beta" only completes with beta's
  certificate), plus the host names and addresses clients dial (``--host``);
- ``urn:pbxmesh:client:<role>:<name>`` for a client (the CLI, a CRM, a dashboard), role ``read``
  (lists, watches, recordings) or ``control`` (also places and ends calls, changes numbers).

Keys are EC P-256 (fast handshakes, small certificates); a key file is written mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_PREFIX = "urn:pbxmesh:server:"
CLIENT_PREFIX = "urn:pbxmesh:client:"
ROLES = ("read", "control")
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
CA_DAYS = 3650
LEAF_DAYS = 397


class PkiError(Exception):
    """A file that cannot be made or read; the message names it."""


@dataclass(frozen=True)
class Identity:
    """Who a verified certificate is for: a server of the group, or a client with a role."""

    kind: str  # "server" or "client"
    name: str  # the server id, or the client's name
    role: str = ""  # for a client: "read" or "control"

    def __str__(self) -> str:
        return f"server {self.name}" if self.kind == "server" else f"client {self.name} ({self.role})"


def identity_of(uris: list[str]) -> Identity | None:
    """The identity written in a certificate's URI names, or None if it names none (or two)."""
    found: list[Identity] = []
    for uri in uris:
        if uri.startswith(SERVER_PREFIX) and NAME_RE.fullmatch(uri[len(SERVER_PREFIX) :]):
            found.append(Identity("server", uri[len(SERVER_PREFIX) :]))
        elif uri.startswith(CLIENT_PREFIX):
            role, _, name = uri[len(CLIENT_PREFIX) :].partition(":")
            if role in ROLES and NAME_RE.fullmatch(name):
                found.append(Identity("client", name, role))
    return found[0] if len(found) == 1 else None


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def init_ca(directory: Path, group: str, force: bool = False) -> tuple[Path, Path]:
    """Makes ``ca.pem`` and ``ca-key.pem`` in ``directory``; refuses to overwrite unless ``force``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if not force and (cert_path.exists() or key_path.exists()):
        raise PkiError(f"{cert_path} exists already (a new CA would orphan every certificate it signed)")
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pbxmesh group {group} CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as error:
        raise PkiError(f"cannot read the CA in {directory}: {error.strerror or error}") from None
    except ValueError as error:
        raise PkiError(f"the CA in {directory} does not load: {error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path}: not an EC key")
    return cert, key


def issue(
    directory: Path, kind: str, name: str, role: str = "", hosts: tuple[str, ...] = (), days: int = LEAF_DAYS
) -> tuple[Path, Path]:
    """Signs a certificate for a server (``kind`` "server") or a client with ``role``; writes
    ``<name>.pem`` and ``<name>-key.pem`` (clients: ``client-<name>...``) beside the CA."""
    if not NAME_RE.fullmatch(name):
        raise PkiError(f"name {name!r}: lowercase letters, digits and '-', at most 63")
    if kind == "client" and role not in ROLES:
        raise PkiError(f"role {role!r}: one of {', '.join(ROLES)}")
    ca_cert, ca_key = _load_ca(directory)
    key = _key()
    names: list[x509.GeneralName] = []
    if kind == "server":
        names += [x509.UniformResourceIdentifier(SERVER_PREFIX + name), x509.DNSName(name)]
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        stem = name
    else:
        names.append(x509.UniformResourceIdentifier(f"{CLIENT_PREFIX}{role}:{name}"))
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        stem = f"client-{name}"
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(min(_now() + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def certificate_identity(pem: bytes) -> Identity | None:
    """The identity a PEM certificate (the first of the file) names."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    return identity_of(san.get_values_for_type(x509.UniformResourceIdentifier))


def check_pair(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> Identity:
    """Checks that the key is the certificate's and that one of the CAs signed it; returns who it
    names. Raises PkiError saying what is wrong."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as error:
        raise PkiError(f"does not load: {error}") from None
    public = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if (
        key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        != public
    ):
        raise PkiError("the key is not the certificate's")
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):  # another issuer, or a forged signature
            continue
        break
    else:
        raise PkiError("no CA of ca_file signed the certificate")
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PkiError(
            f"the certificate is not valid now (valid {cert.not_valid_before_utc} to {cert.not_valid_after_utc})"
        )
    identity = certificate_identity(cert_pem)
    if identity is None:
        raise PkiError("the certificate names no pbxmesh server or client (pbxmesh ca issue makes one)")
    return identity
