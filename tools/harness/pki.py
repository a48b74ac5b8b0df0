"""Test PKI as PEM files, for local servers (PostgreSQL, nginx) and for tests: a thin layer over
Orthweb's one PKI module (userdata/host/pki.py), which the host and ``make modality-cert`` use too."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from userdata.host import pki

VALIDITY_DAYS = 30


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


def _write(folder: Path, name: str, cert: x509.Certificate, key: pki.SigningKey) -> Certificate:
    folder.mkdir(parents=True, exist_ok=True)
    out = Certificate(folder / f"{name}.crt", folder / f"{name}.key")
    out.cert.write_text(pki.cert_pem(cert))
    out.key.write_text(pki.key_pem(key))
    out.key.chmod(0o600)
    return out


def make_ca(folder: Path, name: str = "Orthweb test CA") -> Certificate:
    cert, key = pki.make_ca(pki.subject(name), VALIDITY_DAYS, bits=2048)
    return _write(folder, "ca", cert, key)


def issue(
    folder: Path, ca: Certificate, name: str, sans: str = "DNS:localhost,IP:127.0.0.1", *, client: bool = False
) -> Certificate:
    """A certificate for ``name`` issued by ``ca``: serverAuth with ``sans``, or clientAuth."""
    ca_cert, ca_key = pki.load_cert(ca.cert.read_text()), pki.load_key(ca.key.read_text())
    names = sans.split(",") if sans and not client else []
    cert, key = pki.issue(ca_cert, ca_key, pki.subject(name), VALIDITY_DAYS, names=names, client=client)
    return _write(folder, name, cert, key)


def make_server_cert(folder: Path, ca: Certificate, name: str, sans: str = "DNS:localhost,IP:127.0.0.1") -> Certificate:
    return issue(folder, ca, name, sans)
