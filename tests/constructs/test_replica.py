"""Replica alone: everything of the replica's region on its own provider, the rule on the source
bucket, a least-privilege role, and the settings that follow the site's (retention, Object Lock,
force_destroy)."""

from __future__ import annotations

import json

from cdktf_cdktf_provider_aws.data_aws_iam_policy_document import DataAwsIamPolicyDocument
from cdktf_cdktf_provider_aws.kms_key import KmsKey
from cdktf_cdktf_provider_aws.provider import AwsProvider
from cdktf_cdktf_provider_aws.s3_bucket import S3Bucket
from cdktf_cdktf_provider_aws.s3_bucket_lifecycle_configuration import S3BucketLifecycleConfiguration
from cdktf_cdktf_provider_aws.s3_bucket_object_lock_configuration import S3BucketObjectLockConfigurationA
from cdktf_cdktf_provider_aws.s3_bucket_policy import S3BucketPolicy
from cdktf_cdktf_provider_aws.s3_bucket_replication_configuration import S3BucketReplicationConfigurationA
from cdktf_cdktf_provider_aws.s3_bucket_server_side_encryption_configuration import (
    S3BucketServerSideEncryptionConfigurationA,
)
from cdktf_cdktf_provider_aws.s3_bucket_versioning import S3BucketVersioningA

from modules.replica import Replica, ReplicaProps

REGION = "us-west-2"


def make(**overrides):
    def run(stack, account):
        AwsProvider(stack, "aws", region="us-east-1")
        there = AwsProvider(stack, "aws-replica", region=REGION, alias="replica")
        source = S3Bucket(stack, "source", bucket_prefix="site-dicom-")
        versioning = S3BucketVersioningA(
            stack, "source-versioning", bucket=source.id, versioning_configuration={"status": "Enabled"}
        )
        values = dict(
            name="site",
            account=account,
            provider=there,
            region=REGION,
            source_bucket=source,
            source_versioning=versioning,
            force_destroy=False,
            noncurrent_version_expiration_days=90,
            log_retention_days=365,
        )
        return Replica(stack, "replica", props=ReplicaProps(**{**values, **overrides}))

    return run


def test_everything_of_the_replica_region_is_on_its_provider(build):
    built = build(make())
    resources = built.data["resource"]
    replica_side = {
        (rtype, key): body.get("provider")
        for rtype, found in resources.items()
        for key, body in found.items()
        if key.startswith("replica")
    }
    source_side = {"aws_iam_role", "aws_iam_role_policy", "aws_s3_bucket_replication_configuration"}
    for (rtype, key), provider in replica_side.items():
        expected = None if rtype in source_side else "aws.replica"
        assert provider == expected, (rtype, key, provider)
    assert built.has(S3Bucket.TF_RESOURCE_TYPE, {"bucket_prefix": "site-replica-", "force_destroy": False})
    assert built.has(KmsKey.TF_RESOURCE_TYPE, {"enable_key_rotation": True, "deletion_window_in_days": 30})


def test_replica_bucket_is_encrypted_with_its_own_key_versioned_and_tls_only(build):
    built = build(make())
    sse = {
        body["bucket"]: body["rule"][0]
        for body in built.resources(S3BucketServerSideEncryptionConfigurationA.TF_RESOURCE_TYPE).values()
    }
    replica = sse["${aws_s3_bucket.replica_bucket.id}"]
    assert replica["apply_server_side_encryption_by_default"] == {
        "sse_algorithm": "aws:kms",
        "kms_master_key_id": "${aws_kms_key.replica_key.arn}",
    }
    assert replica["bucket_key_enabled"] is True
    # Server access logs can be delivered only to an SSE-S3 bucket in the same region.
    assert sse["${aws_s3_bucket.replica_log_bucket.id}"]["apply_server_side_encryption_by_default"] == {
        "sse_algorithm": "AES256"
    }
    versioned = {b["bucket"] for b in built.resources(S3BucketVersioningA.TF_RESOURCE_TYPE).values()}
    assert {"${aws_s3_bucket.replica_bucket.id}", "${aws_s3_bucket.replica_log_bucket.id}"} <= versioned
    policies = {p["bucket"]: json.loads(p["policy"]) for p in built.resources(S3BucketPolicy.TF_RESOURCE_TYPE).values()}
    sids = [s["Sid"] for s in policies["${aws_s3_bucket.replica_bucket.id}"]["Statement"]]
    assert sids == ["DenyInsecureTransport", "DenyOtherEncryption", "DenyOtherKeys", "DenyCustomerKeys"]
    other_keys = policies["${aws_s3_bucket.replica_bucket.id}"]["Statement"][2]["Condition"]
    assert other_keys == {
        "StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption-aws-kms-key-id": "${aws_kms_key.replica_key.arn}"}
    }


def test_the_rule_replicates_every_object_but_no_deletion(build):
    built = build(make())
    config = next(iter(built.resources(S3BucketReplicationConfigurationA.TF_RESOURCE_TYPE).values()))
    assert config["bucket"] == "${aws_s3_bucket.source.id}"
    assert "provider" not in config, "the rule lives on the source bucket, in the site's region"
    assert any("source-versioning" in d for d in config["depends_on"])
    assert any("replica-versioning" in d for d in config["depends_on"])
    (rule,) = config["rule"]
    assert rule["status"] == "Enabled" and rule["filter"] == {"prefix": ""}
    assert rule["delete_marker_replication"] == {"status": "Disabled"}
    assert rule["source_selection_criteria"] == {"sse_kms_encrypted_objects": {"status": "Enabled"}}
    assert rule["destination"] == {
        "bucket": "${aws_s3_bucket.replica_bucket.arn}",
        "storage_class": "GLACIER_IR",
        "encryption_configuration": {"replica_kms_key_id": "${aws_kms_key.replica_key.arn}"},
        "metrics": {"status": "Enabled"},
    }


def test_the_role_is_trusted_by_s3_of_this_account_and_may_only_replicate(build):
    built = build(make())
    documents = built.data["data"][DataAwsIamPolicyDocument.TF_RESOURCE_TYPE]
    (trust,) = next(d for k, d in documents.items() if "replication-trust" in k)["statement"]
    assert trust["principals"] == [{"type": "Service", "identifiers": ["s3.amazonaws.com"]}]
    assert [c["variable"] for c in trust["condition"]] == ["aws:SourceAccount"]
    write = {s["sid"]: s for s in next(d for k, d in documents.items() if "replication-write" in k)["statement"]}
    assert write["WriteReplicas"]["actions"] == ["s3:ReplicateObject", "s3:ReplicateTags"]
    assert write["WriteReplicas"]["resources"] == ["${aws_s3_bucket.replica_bucket.arn}/*"]
    key = write["UseReplicaKeyThroughS3"]
    assert key["actions"] == ["kms:Encrypt", "kms:Decrypt"] and key["resources"] == ["${aws_kms_key.replica_key.arn}"]
    assert key["condition"] == [
        {"test": "StringEquals", "variable": "kms:ViaService", "values": [f"s3.{REGION}.amazonaws.com"]}
    ]
    assert "s3:ReplicateDelete" not in json.dumps(write), "delete markers are not replicated"


def test_retention_object_lock_and_destroy_follow_the_site(build):
    kept = build(make(noncurrent_version_expiration_days=45))
    rules = {
        lc["bucket"]: {r["id"]: r for r in lc["rule"]}
        for lc in kept.resources(S3BucketLifecycleConfiguration.TF_RESOURCE_TYPE).values()
    }
    replica = rules["${aws_s3_bucket.replica_bucket.id}"]
    assert replica["expire-noncurrent-versions"]["noncurrent_version_expiration"] == [{"noncurrent_days": 45}]
    assert "expire-logs" in rules["${aws_s3_bucket.replica_log_bucket.id}"]
    assert not kept.has(S3BucketObjectLockConfigurationA.TF_RESOURCE_TYPE)
    locked = build(make(object_lock_days=30, force_destroy=True))
    lock = next(iter(locked.resources(S3BucketObjectLockConfigurationA.TF_RESOURCE_TYPE).values()))
    assert lock["bucket"] == "${aws_s3_bucket.replica_bucket.id}" and lock["provider"] == "aws.replica"
    assert lock["rule"] == {"default_retention": {"mode": "GOVERNANCE", "days": 30}}
    replicas = [b for k, b in locked.resources(S3Bucket.TF_RESOURCE_TYPE).items() if k.startswith("replica")]
    assert len(replicas) == 2 and all(b["force_destroy"] is True for b in replicas)
