"""Small test PKI with openssl: a CA and server certificates, for local servers (PostgreSQL, nginx)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(folder: Path, name: str = "Orthweb test CA") -> Certificate:
    folder.mkdir(parents=True, exist_ok=True)
    ca = Certificate(folder / "ca.crt", folder / "ca.key")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-sha256",
        "-days",
        "30",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(ca.key),
        "-out",
        str(ca.cert),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    return ca


def make_server_cert(folder: Path, ca: Certificate, name: str, sans: str = "DNS:localhost,IP:127.0.0.1") -> Certificate:
    folder.mkdir(parents=True, exist_ok=True)
    out = Certificate(folder / f"{name}.crt", folder / f"{name}.key")
    csr, ext = folder / f"{name}.csr", folder / f"{name}.ext"
    ext.write_text(f"basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName={sans}\n")
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-sha256",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(out.key),
        "-out",
        str(csr),
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca.cert),
        "-CAkey",
        str(ca.key),
        "-CAcreateserial",
        "-days",
        "30",
        "-sha256",
        "-extfile",
        str(ext),
        "-out",
        str(out.cert),
    )
    return out
