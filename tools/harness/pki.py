"""Small test PKI built in code with ``cryptography``: a CA and certificates it issues, written as
PEM files, for local servers (PostgreSQL, nginx) and for tests."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(folder: Path, name: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> Certificate:
    folder.mkdir(parents=True, exist_ok=True)
    out = Certificate(folder / f"{name}.crt", folder / f"{name}.key")
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    out.key.chmod(0o600)
    return out


def _load(cert: Certificate) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = serialization.load_pem_private_key(cert.key.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return x509.load_pem_x509_certificate(cert.cert.read_bytes()), key


def _builder(subject: str, issuer: x509.Name | None, public_key: rsa.RSAPublicKey) -> x509.CertificateBuilder:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def make_ca(folder: Path, name: str = "Orthweb test CA") -> Certificate:
    key = _key()
    cert = (
        _builder(name, None, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .sign(key, hashes.SHA256())
    )
    return _write(folder, "ca", cert, key)


def _san(entry: str) -> x509.GeneralName:
    kind, _, value = entry.partition(":")
    return x509.IPAddress(ipaddress.ip_address(value)) if kind == "IP" else x509.DNSName(value)


def issue(
    folder: Path, ca: Certificate, name: str, sans: str = "DNS:localhost,IP:127.0.0.1", *, client: bool = False
) -> Certificate:
    """A certificate for ``name`` issued by ``ca``: serverAuth with ``sans``, or clientAuth."""
    ca_cert, ca_key = _load(ca)
    key = _key()
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        _builder(name, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans and not client:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(e) for e in sans.split(",")]), critical=False)
    return _write(folder, name, builder.sign(ca_key, hashes.SHA256()), key)


def make_server_cert(folder: Path, ca: Certificate, name: str, sans: str = "DNS:localhost,IP:127.0.0.1") -> Certificate:
    return issue(folder, ca, name, sans)
