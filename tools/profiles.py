"""The reference deployments the tools and tests synthesize, in one place.

``default`` is what ``make synth`` builds; ``prod`` is a production site as docs/production.md
asks for (client networks narrowed, DICOM client certificates; its DICOM bucket replicated to
us-west-2, prod's default for us-east-1); ``scaled`` is ``prod`` with three hosts behind a load
balancer; ``replica`` is a dev site that opts into replication to a region of its choice; ``all``
sets every input away from its default.
"""

from __future__ import annotations

from typing import Any

from config.inputs import DicomModality

PROD: dict[str, Any] = {
    "environment": "prod",
    "web_client_cidrs": ("10.20.0.0/16",),
    "dicom_client_cidrs": ("10.20.1.0/24",),
    "dicom_client_auth": "certificate",
}
# Every optional extra switched on (validated and scanned, not planned).
EXTRAS: dict[str, Any] = {
    **PROD,
    "cloudtrail": True,
    "object_lock_days": 30,
    "backup_retention_days": 35,
    "intelligent_tiering": True,
}
_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb5nC2m1wV0Y2bKq3n8dFJkT7H2cX0f5e9r3QmT0aBc admin@site"
ALL: dict[str, Any] = dict(
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
    dicom_client_auth="certificate",
    site_name="pacs.example.org",
    ae_title="PACSX",
    tls_certificate_secret="my/cert",  # noqa: S106 - a secret name, not a value
    tags=(("CostCenter", "imaging"),),
    unique_suffix=True,
    dicom_modalities=(DicomModality("PACS", "10.2.0.5", 104, ("echo", "find", "move", "store")),),
    container_logs=False,
    db_multi_az=False,
    log_retention_days=2557,
    region="eu-west-1",
    replica_region="eu-central-1",
    name="radiology",
    nginx_image="nginx:1.28.0",
)
# The scaled profile: three hosts behind a Network Load Balancer, alarms by email.
SCALED: dict[str, Any] = {**PROD, "hosts": 3, "hosts_max": 6, "alarm_email": "imaging-it@hospital.example"}
# The scaled profile as the deploy rehearsal applies it: three hosts, alarms by email, the default
# client networks (the checks expect them), and the account's Session Manager preferences (prod's).
SCALED_REHEARSAL: dict[str, Any] = {
    "hosts": 3,
    "hosts_max": 6,
    "alarm_email": SCALED["alarm_email"],
    "session_preferences": True,
    # The emulator's account (moto's default): the role is made by the test that assumes it.
    "break_glass_role_arns": ("arn:aws:iam::123456789012:role/orthweb-break-glass",),
}
PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "prod": PROD,
    "scaled": SCALED,
    "hosts2": {"hosts": 2},
    "az3": {"az_count": 3, "interface_endpoints": ("ssm", "secretsmanager")},
    "extras": EXTRAS,
    # Replication outside prod is opt-in, to any region other than the site's.
    "replica": {"replica_region": "us-east-2"},
}
SNAPSHOT_PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "prod": PROD,
    "scaled": SCALED,
    "emulator": {"target": "emulator", "emulator_endpoint": "http://127.0.0.1:4566"},
    "all": ALL,
}
