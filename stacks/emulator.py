"""What the ``emulator`` target changes, in one place.

The AWS API emulator (moto server on loopback) is a stand-in for AWS used by rehearsals and tests;
it is never a real account. For it the stack: points every AWS endpoint of the provider (and of the
replica region's provider) at the loopback URL with placeholder keys (so ambient credentials are
never used); leaves detailed monitoring of the instance to the launch template, because the
emulator has no MonitorInstances API; and keeps only the TLS rule, on the bucket itself, in the
DICOM and config bucket policies: the emulator applies a Deny whose conditions it cannot evaluate
(``...IfExists``, ``Null``) to every request, and it speaks plain HTTP on loopback, so the TLS rule
on objects would refuse the boot bundle's upload and download (the replica bucket's policy
likewise); and lets the load balancer's subnet mappings be, because the emulator drops their
Elastic IP allocations (the provider would then try to change them with a call the emulator
refuses). Nothing else differs from the ``aws`` target.
"""

from __future__ import annotations

from typing import Any

from cdktf import TerraformResourceLifecycle

from config.facts import EMULATOR_PLACEHOLDER_KEY
from modules.balancer import LoadBalancer
from modules.host import Host
from modules.policy import resource_policy_json
from modules.replica import Replica
from modules.storage import Storage, deny_insecure_transport

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


def adapt_host(host: Host) -> None:
    """The emulator does not implement MonitorInstances; the launch template still asks for it."""
    if host.props.fleet is None:  # a fleet's hosts come from the template alone
        host.instance.reset_monitoring()


def adapt_storage(storage: Storage) -> None:
    """Only the TLS rule in the DICOM and config bucket policies (see the module docstring)."""
    buckets = {"dicom": storage.bucket, "config": storage.config_bucket}
    for label, policy in storage.bucket_policies.items():
        policy.policy = resource_policy_json([deny_insecure_transport(buckets[label], objects=False)])


def adapt_replica(replica: Replica) -> None:
    """Only the TLS rule in the replica bucket's policy, as in the site's buckets (module docstring)."""
    replica.bucket_policy.policy = resource_policy_json([deny_insecure_transport(replica.bucket, objects=False)])


def adapt_balancer(balancer: LoadBalancer) -> None:
    """The emulator does not keep a subnet mapping's Elastic IP (see the module docstring)."""
    balancer.load_balancer.lifecycle = TerraformResourceLifecycle(ignore_changes=["subnet_mapping"])
