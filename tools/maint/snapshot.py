"""Synthesize reference profiles and write or compare their ``cdk.tf.json``, byte for byte.

    python -m tools.maint.snapshot write DIR      # one DIR/<profile>.json per profile
    python -m tools.maint.snapshot compare DIR    # exit 1 and name each profile that differs

Used around refactorings that must not change what Terraform sees: write before, compare after.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from config.inputs import DicomModality, OrthwebConfig

_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb5nC2m1wV0Y2bKq3n8dFJkT7H2cX0f5e9r3QmT0aBc admin@site"
PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "prod": {"environment": "prod"},
    "emulator": {"target": "emulator", "emulator_endpoint": "http://127.0.0.1:4566"},
    # Every option away from its default.
    "all": dict(
        environment="prod",
        cloudtrail=True,
        object_lock_days=30,
        backup_retention_days=35,
        intelligent_tiering=True,
        az_count=3,
        interface_endpoints=("ssm", "secretsmanager", "kms"),
        ami_id="ami-0123456789abcdef0",
        ssh_public_key=_KEY,
        web_client_cidrs=("10.1.0.0/16",),
        dicom_client_cidrs=("10.2.0.0/24", "10.3.0.0/24"),
        site_name="pacs.example.org",
        ae_title="PACSX",
        tls_certificate_secret="my/cert",  # noqa: S106 - a secret name, not a value
        tags=(("CostCenter", "imaging"),),
        unique_suffix=True,
        dicom_modalities=(DicomModality("PACS", "10.2.0.5", 104, ("echo", "find", "store")),),
        container_logs=False,
        db_multi_az=False,
        log_retention_days=90,
        region="eu-west-1",
        name="radiology",
        nginx_image="nginx:1.28.0",
    ),
}


def synthesize(profile: str) -> bytes:
    from main import build_app

    config = OrthwebConfig(**PROFILES[profile]).validate()
    out = Path(tempfile.mkdtemp(prefix="orthweb-snapshot-"))
    try:
        build_app(config, str(out)).synth()
        return (out / "stacks" / config.name / "cdk.tf.json").read_bytes()
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("write", "compare"):
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    differ = []
    for profile in PROFILES:
        data, path = synthesize(profile), folder / f"{profile}.json"
        if argv[1] == "write":
            path.write_bytes(data)
            print(f"wrote {path} ({len(data)} bytes)")
        elif not path.exists() or path.read_bytes() != data:
            differ.append(profile)
        else:
            print(f"{profile}: identical ({len(data)} bytes)")
    for profile in differ:
        print(f"{profile}: DIFFERS from {folder / (profile + '.json')}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
