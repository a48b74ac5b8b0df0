"""What the ``emulator`` target changes, in one place.

The AWS API emulator (moto server on loopback) is a stand-in for AWS used by rehearsals and tests;
it is never a real account. For it the stack: points every AWS endpoint of the provider at the
loopback URL with placeholder keys (so ambient credentials are never used), and leaves detailed
monitoring of the instance to the launch template, because the emulator has no MonitorInstances
API. Nothing else differs from the ``aws`` target.
"""

from __future__ import annotations

from typing import Any

from config.facts import EMULATOR_PLACEHOLDER_KEY
from modules.host import Host

# Services the stack calls; the emulator target points each at the loopback emulator.
EMULATED_SERVICES = ("ec2", "s3", "rds", "iam", "kms", "secretsmanager", "sts", "cloudwatchlogs", "ssm", "cloudwatch")


def provider_settings(endpoint: str) -> dict[str, Any]:
    """AWS provider settings that send every call to the emulator (provider argument names)."""
    return {
        "access_key": EMULATOR_PLACEHOLDER_KEY,
        "secret_key": EMULATOR_PLACEHOLDER_KEY,
        "skip_credentials_validation": True,
        "skip_requesting_account_id": True,
        "skip_metadata_api_check": "true",
        "skip_region_validation": True,
        "s3_use_path_style": True,
        "endpoints": [{service: endpoint for service in EMULATED_SERVICES}],
    }


def adapt_host(host: Host) -> None:
    """The emulator does not implement MonitorInstances; the launch template still asks for it."""
    host.instance.reset_monitoring()
