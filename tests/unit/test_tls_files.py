"""TlsFiles follows files that Kubernetes renews in place: a Secret or ConfigMap volume holds
``name -> ..data/name`` and ``..data -> ..<timestamp>/``, and an update writes a new folder and
swaps the ``..data`` link (kubelet's atomic writer)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from services.runtime.pki import init_ca, issue
from services.runtime.tls import TlsFiles

NAMES = ("ca.crt", "tls.crt", "tls.key")


def issued(pki: Path, server_id: str = "alpha") -> dict[str, bytes]:
    """A fresh certificate of the CA in ``pki``, as cert-manager's Secret names the files."""
    cert, key = issue(pki, "server", server_id)
    return {"ca.crt": (pki / "ca.pem").read_bytes(), "tls.crt": cert.read_bytes(), "tls.key": key.read_bytes()}


class Volume:
    """A folder laid out and updated the way kubelet does it."""

    def __init__(self, root: Path, files: dict[str, bytes]):
        self.root = root
        self.serial = 0
        root.mkdir()
        self.current = self._write(files)
        (root / "..data").symlink_to(self.current.name)
        for name in files:
            (root / name).symlink_to(f"..data/{name}")

    def _write(self, files: dict[str, bytes]) -> Path:
        self.serial += 1
        folder = self.root / f"..2026_05_01_00_00_0{self.serial}.{self.serial}"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return folder

    def update(self, files: dict[str, bytes]) -> Path:
        old, self.current = self.current, self._write(files)
        (self.root / "..data_tmp").symlink_to(self.current.name)
        os.rename(self.root / "..data_tmp", self.root / "..data")
        shutil.rmtree(old)
        return old

    def paths(self) -> list[Path]:
        return [self.root / name for name in NAMES]


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    init_ca(tmp_path / "pki", "test")
    return tmp_path / "pki"


def test_a_renewal_swapped_in_through_data_is_read(pki: Path, tmp_path: Path) -> None:
    first, renewed = issued(pki), issued(pki)
    volume = Volume(tmp_path / "tls", first)
    files = TlsFiles(*volume.paths())
    assert files.pems[1] == first["tls.crt"] and files.version == 1
    assert not files.load()  # nothing changed
    volume.update(renewed)
    assert files.load()
    assert files.pems == (renewed["ca.crt"], renewed["tls.crt"], renewed["tls.key"])
    assert files.version == 2 and files.identity is not None and files.identity.name == "alpha"
    assert not files.load()


def test_a_swap_is_seen_even_when_the_new_files_have_the_old_sizes_and_times(pki: Path, tmp_path: Path) -> None:
    first, renewed = issued(pki), issued(pki)
    # Same lengths (PEM takes trailing newlines), so that only the file the path leads to differs.
    width = max(len(first["tls.crt"]), len(renewed["tls.crt"]))
    for pems in (first, renewed):
        pems["tls.crt"] = pems["tls.crt"].ljust(width, b"\n")
    assert len(first["tls.key"]) == len(renewed["tls.key"])  # P-256 keys in PKCS#8: one length
    volume = Volume(tmp_path / "tls", first)
    files = TlsFiles(*volume.paths())
    times = {name: os.stat(volume.current / name).st_mtime_ns for name in NAMES}
    volume.update(renewed)
    for name in NAMES:
        os.utime(volume.current / name, ns=(times[name], times[name]))
    assert files.load()
    assert files.pems[1] == renewed["tls.crt"]


def test_a_swap_to_files_that_do_not_check_keeps_the_loaded_ones(pki: Path, tmp_path: Path) -> None:
    first, other = issued(pki), issued(pki)
    volume = Volume(tmp_path / "tls", first)
    files = TlsFiles(*volume.paths())
    volume.update({**other, "tls.key": first["tls.key"]})  # a key that is not the certificate's
    assert not files.load()
    assert files.pems[1] == first["tls.crt"] and files.version == 1
    volume.update(other)  # the next update puts it right
    assert files.load()
    assert files.pems[1] == other["tls.crt"]


def test_a_ca_bundle_with_two_cas_from_another_volume_takes_a_certificate_of_the_new_ca(
    pki: Path, tmp_path: Path
) -> None:
    """A change of CA: the trust bundle (a ConfigMap) holds both CAs, the Secret swaps to a
    certificate of the new one."""
    init_ca(tmp_path / "new", "test")
    old_cert, new_cert = issued(pki), issued(tmp_path / "new")
    bundle = Volume(tmp_path / "bundle", {"ca.crt": old_cert["ca.crt"]})
    secret = Volume(tmp_path / "tls", old_cert)
    files = TlsFiles(bundle.root / "ca.crt", secret.root / "tls.crt", secret.root / "tls.key")
    bundle.update({"ca.crt": old_cert["ca.crt"] + new_cert["ca.crt"]})
    assert files.load()
    secret.update(new_cert)
    assert files.load()
    assert files.pems[1] == new_cert["tls.crt"]
