"""Storage alone: buckets, their protection, Object Lock and trail delivery only when asked for."""

from __future__ import annotations

import json

from cdktf_cdktf_provider_aws.s3_bucket import S3Bucket
from cdktf_cdktf_provider_aws.s3_bucket_lifecycle_configuration import S3BucketLifecycleConfiguration
from cdktf_cdktf_provider_aws.s3_bucket_object_lock_configuration import S3BucketObjectLockConfigurationA
from cdktf_cdktf_provider_aws.s3_bucket_policy import S3BucketPolicy

from modules.storage import Storage, StorageProps


def props(account, **overrides) -> StorageProps:
    values = dict(
        name="site",
        account=account,
        key_arn="arn:aws:kms:us-east-1:123456789012:key/test",
        force_destroy=False,
        noncurrent_version_expiration_days=90,
        log_retention_days=365,
    )
    return StorageProps(**{**values, **overrides})


def log_policy(built) -> dict:
    policies = built.resources(S3BucketPolicy.TF_RESOURCE_TYPE)
    return json.loads(next(p for key, p in policies.items() if "log-policy" in key)["policy"])


def test_object_lock_off_creates_no_lock_configuration(build):
    built = build(lambda stack, account: Storage(stack, "storage", props=props(account)))
    assert not built.has(S3BucketObjectLockConfigurationA.TF_RESOURCE_TYPE)
    assert built.has(S3Bucket.TF_RESOURCE_TYPE, {"bucket_prefix": "site-dicom-", "force_destroy": False})


def test_object_lock_on_is_governance_after_versioning(build):
    built = build(lambda stack, account: Storage(stack, "storage", props=props(account, object_lock_days=30)))
    assert built.has(
        S3BucketObjectLockConfigurationA.TF_RESOURCE_TYPE,
        {"object_lock_enabled": "Enabled", "rule": {"default_retention": {"mode": "GOVERNANCE", "days": 30}}},
    )
    lock = next(iter(built.resources(S3BucketObjectLockConfigurationA.TF_RESOURCE_TYPE).values()))
    assert any("dicom-versioning" in dep for dep in lock["depends_on"])


def test_force_destroy_is_what_the_stack_decides(build):
    built = build(lambda stack, account: Storage(stack, "storage", props=props(account, force_destroy=True)))
    buckets = built.resources(S3Bucket.TF_RESOURCE_TYPE)
    assert {b["force_destroy"] for b in buckets.values()} == {True}


def test_trail_delivery_is_granted_only_when_asked(build):
    plain = build(lambda stack, account: Storage(stack, "storage", props=props(account)))
    # One access-log statement per source bucket, each limited to its own prefix.
    statements = log_policy(plain)["Statement"]
    assert [s["Sid"] for s in statements] == [
        "DenyInsecureTransport",
        "S3ServerAccessLogsDicom",
        "S3ServerAccessLogsConfig",
    ]
    assert statements[1]["Resource"].endswith("/s3-access/site-dicom/*")
    assert statements[2]["Resource"].endswith("/s3-access/site-config/*")

    def with_trail(stack, account):
        Storage(stack, "storage", props=props(account)).allow_trail_delivery("trails")

    granted = log_policy(build(with_trail))
    sids = [s["Sid"] for s in granted["Statement"]]
    assert sids[-2:] == ["CloudTrailAclCheck", "CloudTrailWrite"]
    write = granted["Statement"][-1]
    assert write["Principal"] == {"Service": "cloudtrail.amazonaws.com"}
    assert "/trails/AWSLogs/" in write["Resource"]


def test_intelligent_tiering_rule_only_when_on(build):
    def rule_ids(built) -> set[str]:
        return {
            r["id"]
            for lc in built.resources(S3BucketLifecycleConfiguration.TF_RESOURCE_TYPE).values()
            for r in lc["rule"]
        }

    off = build(lambda stack, account: Storage(stack, "storage", props=props(account)))
    on = build(lambda stack, account: Storage(stack, "storage", props=props(account, intelligent_tiering=True)))
    assert "intelligent-tiering" not in rule_ids(off) and "intelligent-tiering" in rule_ids(on)
