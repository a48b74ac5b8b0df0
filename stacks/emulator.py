"""What the ``emulator`` target changes, in one place.

The AWS API emulator (moto server on loopback) is a stand-in for AWS used by rehearsals and tests;
it is never a real account. For it the stack: points every AWS endpoint of the provider (and of the
replica region's provider) at the loopback URL with placeholder keys (so ambient credentials are
never used); leaves detailed monitoring of the instance to the launch template, because the
emulator has no MonitorInstances API; and lets the load balancer's subnet mappings be, because the emulator drops their
Elastic IP allocations (the provider would then try to change them with a call the emulator
refuses). Nothing else differs from the ``aws`` target: the bucket policies are the real ones (the
emulator judges their Deny statements as tools/harness/moto_server.py says).
"""

from __future__ import annotations

from typing import Any

import jsii
from cdktf import IAspect, TerraformResourceLifecycle
from cdktf_cdktf_provider_aws.instance import Instance
from cdktf_cdktf_provider_aws.lb import Lb
from constructs import IConstruct

from config.facts import EMULATOR_PLACEHOLDER_KEY

# Services the stack calls; the emulator target points each at the loopback emulator.
EMULATED_SERVICES = (
    *("ec2", "s3", "rds", "iam", "kms", "secretsmanager", "sts", "cloudwatchlogs", "ssm", "cloudwatch"),
    *("elbv2", "autoscaling", "sns"),
)


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


def backend_settings(endpoint: str) -> dict[str, Any]:
    """S3 backend settings that keep the state in the emulator (backend argument names)."""
    return {
        "access_key": EMULATOR_PLACEHOLDER_KEY,
        "secret_key": EMULATOR_PLACEHOLDER_KEY,
        "skip_credentials_validation": True,
        "skip_requesting_account_id": True,
        "skip_metadata_api_check": True,
        "skip_region_validation": True,
        "use_path_style": True,
        "endpoints": {"s3": endpoint, "sts": endpoint, "iam": endpoint},
    }


@jsii.implements(IAspect)
class EmulatorAdjustments:
    """A CDKTF Aspect, added to the stack for the emulator target: it visits every construct once the
    stack is built and changes only what the emulator cannot take (module docstring)."""

    def visit(self, node: IConstruct) -> None:
        if isinstance(node, Instance):
            # The emulator does not implement MonitorInstances; the launch template still asks for it.
            node.reset_monitoring()
        elif isinstance(node, Lb):
            # The emulator does not keep a subnet mapping's Elastic IP.
            node.lifecycle = TerraformResourceLifecycle(ignore_changes=["subnet_mapping"])
