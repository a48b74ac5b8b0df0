"""A replica of the DICOM bucket in a second region: its key, its buckets, the replication rule and role."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cdktf import TerraformProvider
from cdktf_cdktf_provider_aws.s3_bucket import S3Bucket
from cdktf_cdktf_provider_aws.s3_bucket_lifecycle_configuration import S3BucketLifecycleConfiguration
from cdktf_cdktf_provider_aws.s3_bucket_logging import S3BucketLoggingA
from cdktf_cdktf_provider_aws.s3_bucket_object_lock_configuration import S3BucketObjectLockConfigurationA
from cdktf_cdktf_provider_aws.s3_bucket_policy import S3BucketPolicy
from cdktf_cdktf_provider_aws.s3_bucket_replication_configuration import (
    S3BucketReplicationConfigurationA,
    S3BucketReplicationConfigurationRule,
    S3BucketReplicationConfigurationRuleDeleteMarkerReplication,
    S3BucketReplicationConfigurationRuleDestination,
    S3BucketReplicationConfigurationRuleDestinationEncryptionConfiguration,
    S3BucketReplicationConfigurationRuleDestinationMetrics,
    S3BucketReplicationConfigurationRuleFilter,
    S3BucketReplicationConfigurationRuleSourceSelectionCriteria,
    S3BucketReplicationConfigurationRuleSourceSelectionCriteriaSseKmsEncryptedObjects,
)
from cdktf_cdktf_provider_aws.s3_bucket_server_side_encryption_configuration import (
    S3BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultA as EncryptionDefault,
)
from cdktf_cdktf_provider_aws.s3_bucket_versioning import S3BucketVersioningA
from constructs import Construct

from modules.account import Account
from modules.key import CustomerKey, only_named_decrypt
from modules.policy import Statement, resource_policy_json, service_role
from modules.storage import (
    ABORT_UPLOADS,
    access_log_delivery,
    deny_foreign_encryption,
    deny_insecure_transport,
    log_rules,
    noncurrent_rule,
    only_named_roles,
    protect,
)

RULE_ID = "dicom-to-replica"
# Glacier Instant Retrieval: a fifth of S3 Standard's storage price, still read in milliseconds when
# the replica is needed (then $0.03/GB retrieved, once). Its 90-day minimum and 128 KB minimum object
# size cost little here: DICOM files are kept for years and are mostly larger.
REPLICA_STORAGE_CLASS = "GLACIER_IR"
# What S3 replication does in the replica bucket: write object versions and their tags. Not
# s3:ReplicateDelete: delete markers are not replicated (see DELETE_MARKERS).
REPLICATE_ACTIONS = ("s3:ReplicateObject", "s3:ReplicateTags")
# A deletion in the site's bucket (a mistake, a script, stolen credentials) stays there: the replica
# keeps every DICOM file ever stored, beyond the site's noncurrent-version window. S3 never
# replicates the removal of a version, only delete markers, and these are off.
DELETE_MARKERS = "Disabled"
# The replica key's use by replication, through S3 in the replica's region only: kms:Encrypt for the
# replicas, kms:Decrypt because S3 checks the bucket key with it (S3 Bucket Keys with replication).
REPLICA_KEY_ACTIONS = ("kms:Encrypt", "kms:Decrypt")


@dataclass(frozen=True)
class ReplicaProps:
    name: str
    account: Account
    provider: TerraformProvider  # the AWS provider of the replica's region
    region: str
    source_bucket: S3Bucket
    source_versioning: S3BucketVersioningA
    force_destroy: bool
    noncurrent_version_expiration_days: int
    log_retention_days: int
    object_lock_days: int = 0


class Replica(Construct):
    """A copy of every DICOM object in another region, under a key of that region.

    Builds, in the replica's region: a customer KMS key (rotation on) with its alias; the replica
    bucket, versioned, public access blocked, objects owner-enforced, SSE-KMS with that key and a
    bucket key, TLS-only, refusing writes under any other key, noncurrent versions expiring like the
    site's, Object Lock like the site's; and an SSE-S3 access-log bucket for it. In the site's
    region: the replication rule on the DICOM bucket (every object, SSE-KMS ones included; delete
    markers not replicated; replicas in Glacier Instant Retrieval; replication metrics on, no
    Replication Time Control) and the role S3 replicates with, trusted only by S3 of this account.

    The role may write replicas and use the replica key through S3 in the replica's region; the
    owners of the DICOM bucket and of the site key grant it the rest (``Storage.grant_replication_source``,
    ``SiteKey.grant_use``). ``force_destroy`` follows the site's buckets.
    """

    def __init__(self, scope: Construct, id_: str, *, props: ReplicaProps):
        super().__init__(scope, id_)
        self.props = props
        self._key()
        self._buckets()
        self._policies_and_logging()
        self._role()
        self._rule()

    def limit_study_access(self, principal_arns: Sequence[str]) -> None:
        """The replica's studies as the site's: only ``principal_arns`` read, write or delete them or
        decrypt them through S3 (replication writes with s3:Replicate*, which is not refused)."""
        self._bucket_statements.append(only_named_roles(self.bucket, principal_arns, self.props.force_destroy))
        self.bucket_policy.policy = resource_policy_json(self._bucket_statements)
        self.customer_key.allow(only_named_decrypt(self.bucket.arn, principal_arns))

    def _key(self) -> None:
        props = self.props
        self.customer_key = CustomerKey(
            self,
            "key",
            account=props.account,
            description=f"{props.name}: Orthweb DICOM replica key ({props.region})",
            logical_id="replica_key",
            alias_name=f"{props.name}-replica",
            provider=props.provider,
        )
        self.key = self.customer_key.key

    def _buckets(self) -> None:
        props = self.props
        self.bucket = S3Bucket(
            self,
            "bucket",
            provider=props.provider,
            bucket_prefix=f"{props.name}-replica-",
            force_destroy=props.force_destroy,
        )
        # Stateful: renaming this logical ID would make Terraform destroy the replicas.
        self.bucket.override_logical_id("replica_bucket")
        self.log_bucket = S3Bucket(
            self,
            "log-bucket",
            provider=props.provider,
            bucket_prefix=f"{props.name}-replogs-",
            force_destroy=props.force_destroy,
        )
        self.log_bucket.override_logical_id("replica_log_bucket")
        self.versioning = protect(
            self,
            "replica",
            self.bucket,
            sse=EncryptionDefault(sse_algorithm="aws:kms", kms_master_key_id=self.key.arn),
            provider=props.provider,
        )
        # S3 server access logs can only be delivered to an SSE-S3 bucket in the same region.
        protect(self, "log", self.log_bucket, sse=EncryptionDefault(sse_algorithm="AES256"), provider=props.provider)
        S3BucketLifecycleConfiguration(
            self,
            "replica-lifecycle",
            provider=props.provider,
            bucket=self.bucket.id,
            rule=[noncurrent_rule(props.noncurrent_version_expiration_days), ABORT_UPLOADS],
        )
        S3BucketLifecycleConfiguration(
            self,
            "log-lifecycle",
            provider=props.provider,
            bucket=self.log_bucket.id,
            rule=log_rules(props.log_retention_days),
        )
        if props.object_lock_days:
            # Object Lock on the source needs it on the destination: replicas keep their retention.
            S3BucketObjectLockConfigurationA(
                self,
                "replica-object-lock",
                provider=props.provider,
                bucket=self.bucket.id,
                object_lock_enabled="Enabled",
                rule={"default_retention": {"mode": "GOVERNANCE", "days": props.object_lock_days}},
                depends_on=[self.versioning],
            )

    def _policies_and_logging(self) -> None:
        props = self.props
        prefix = f"s3-access/{props.name}-replica/"
        self.log_bucket_policy = S3BucketPolicy(
            self,
            "log-policy",
            provider=props.provider,
            bucket=self.log_bucket.id,
            policy=resource_policy_json(
                [
                    deny_insecure_transport(self.log_bucket),
                    access_log_delivery(
                        "S3ServerAccessLogsReplica", self.log_bucket, prefix, self.bucket, props.account.account_id
                    ),
                ]
            ),
        )
        self._bucket_statements = [
            deny_insecure_transport(self.bucket),
            *deny_foreign_encryption(self.bucket, self.key.arn),
        ]
        self.bucket_policy = S3BucketPolicy(
            self,
            "replica-policy",
            provider=props.provider,
            bucket=self.bucket.id,
            policy=resource_policy_json(self._bucket_statements),
        )
        S3BucketLoggingA(
            self,
            "replica-logging",
            provider=props.provider,
            bucket=self.bucket.id,
            target_bucket=self.log_bucket.id,
            target_prefix=prefix,
            depends_on=[self.log_bucket_policy],
        )

    def _role(self) -> None:
        props = self.props
        via_s3_there = [("StringEquals", "kms:ViaService", [f"s3.{props.region}.amazonaws.com"])]
        self.role = service_role(
            self,
            "replication",
            name=f"{props.name}-replication",
            service="s3.amazonaws.com",
            conditions=[("StringEquals", "aws:SourceAccount", [props.account.account_id])],
            inline=[
                Statement(sid="WriteReplicas", actions=REPLICATE_ACTIONS, resources=[f"{self.bucket.arn}/*"]),
                Statement(
                    sid="UseReplicaKeyThroughS3",
                    actions=REPLICA_KEY_ACTIONS,
                    resources=[self.key.arn],
                    conditions=via_s3_there,
                ),
            ],
            inline_name="write-replicas",
        )

    def _rule(self) -> None:
        props = self.props
        self.replication = S3BucketReplicationConfigurationA(
            self,
            "replication-rule",
            bucket=props.source_bucket.id,
            role=self.role.arn,
            rule=[
                S3BucketReplicationConfigurationRule(
                    id=RULE_ID,
                    status="Enabled",
                    filter=S3BucketReplicationConfigurationRuleFilter(prefix=""),
                    delete_marker_replication=S3BucketReplicationConfigurationRuleDeleteMarkerReplication(
                        status=DELETE_MARKERS
                    ),
                    # Without this, S3 silently skips every SSE-KMS object: all of the DICOM files.
                    source_selection_criteria=S3BucketReplicationConfigurationRuleSourceSelectionCriteria(
                        sse_kms_encrypted_objects=(
                            S3BucketReplicationConfigurationRuleSourceSelectionCriteriaSseKmsEncryptedObjects(
                                status="Enabled"
                            )
                        )
                    ),
                    destination=S3BucketReplicationConfigurationRuleDestination(
                        bucket=self.bucket.arn,
                        storage_class=REPLICA_STORAGE_CLASS,
                        encryption_configuration=(
                            S3BucketReplicationConfigurationRuleDestinationEncryptionConfiguration(
                                replica_kms_key_id=self.key.arn
                            )
                        ),
                        # Metrics (CloudWatch custom-metric prices, about $1.20 a month) feed the failure
                        # alarm; Replication Time Control ($0.015/GB more) buys a 15-minute SLA a DICOM
                        # archive does not need: its recovery point is minutes anyway, its restore hours.
                        metrics=S3BucketReplicationConfigurationRuleDestinationMetrics(status="Enabled"),
                    ),
                )
            ],
            # S3 refuses a replication rule until both buckets are versioned.
            depends_on=[props.source_versioning, self.versioning],
        )
