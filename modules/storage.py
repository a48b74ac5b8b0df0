"""The DICOM bucket and its access-log bucket."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.s3_bucket import S3Bucket
from cdktf_cdktf_provider_aws.s3_bucket_lifecycle_configuration import (
    S3BucketLifecycleConfiguration,
    S3BucketLifecycleConfigurationRule,
    S3BucketLifecycleConfigurationRuleAbortIncompleteMultipartUpload,
    S3BucketLifecycleConfigurationRuleExpiration,
    S3BucketLifecycleConfigurationRuleFilter,
    S3BucketLifecycleConfigurationRuleNoncurrentVersionExpiration,
    S3BucketLifecycleConfigurationRuleTransition,
)
from cdktf_cdktf_provider_aws.s3_bucket_logging import S3BucketLoggingA
from cdktf_cdktf_provider_aws.s3_bucket_notification import S3BucketNotification
from cdktf_cdktf_provider_aws.s3_bucket_object_lock_configuration import S3BucketObjectLockConfigurationA
from cdktf_cdktf_provider_aws.s3_bucket_ownership_controls import S3BucketOwnershipControls
from cdktf_cdktf_provider_aws.s3_bucket_policy import S3BucketPolicy
from cdktf_cdktf_provider_aws.s3_bucket_public_access_block import S3BucketPublicAccessBlock
from cdktf_cdktf_provider_aws.s3_bucket_server_side_encryption_configuration import (
    S3BucketServerSideEncryptionConfigurationA,
    S3BucketServerSideEncryptionConfigurationRuleA,
)
from cdktf_cdktf_provider_aws.s3_bucket_server_side_encryption_configuration import (
    S3BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultA as EncryptionDefault,
)
from cdktf_cdktf_provider_aws.s3_bucket_versioning import S3BucketVersioningA
from constructs import Construct

from modules.account import Account
from modules.policy import Statement, grant, resource_policy_json

# Object-level S3 actions Orthanc's storage plugin needs; nothing that changes bucket settings.
DICOM_OBJECT_ACTIONS = (
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
)
# The plugin lists objects (ListObjects) and looks up the bucket's region.
DICOM_BUCKET_ACTIONS = ("s3:ListBucket", "s3:GetBucketLocation")
ABORT_INCOMPLETE_UPLOAD_DAYS = 7
INTELLIGENT_TIERING_AFTER_DAYS = 30
# Access logs are written once; a replaced log object version has no value after a week.
LOG_NONCURRENT_DAYS = 7
EVERY_OBJECT = [S3BucketLifecycleConfigurationRuleFilter(prefix="")]
ABORT_UPLOADS = S3BucketLifecycleConfigurationRule(
    id="abort-incomplete-uploads",
    status="Enabled",
    filter=EVERY_OBJECT,
    abort_incomplete_multipart_upload=[
        S3BucketLifecycleConfigurationRuleAbortIncompleteMultipartUpload(
            days_after_initiation=ABORT_INCOMPLETE_UPLOAD_DAYS
        )
    ],
)


@dataclass(frozen=True)
class StorageProps:
    name: str
    account: Account
    key_arn: str
    force_destroy: bool
    noncurrent_version_expiration_days: int
    log_retention_days: int
    intelligent_tiering: bool = False
    object_lock_days: int = 0


def _deny_foreign_encryption(bucket: S3Bucket, key_arn: str) -> list[Statement]:
    """Writes encrypted with anything but the site key are refused: another KMS key, SSE-S3, or a
    key the client brings (SSE-C, which the bucket owner could never read or rotate). A write
    without encryption headers gets the bucket default, the site key."""
    every_principal: dict[str, Sequence[str]] = {"AWS": ["*"]}
    objects = [f"{bucket.arn}/*"]
    return [
        Statement(
            sid="DenyOtherEncryption",
            effect="Deny",
            actions=["s3:PutObject"],
            resources=objects,
            principals=every_principal,
            conditions=[("StringNotEqualsIfExists", "s3:x-amz-server-side-encryption", ["aws:kms"])],
        ),
        Statement(
            sid="DenyOtherKeys",
            effect="Deny",
            actions=["s3:PutObject"],
            resources=objects,
            principals=every_principal,
            conditions=[("StringNotEqualsIfExists", "s3:x-amz-server-side-encryption-aws-kms-key-id", [key_arn])],
        ),
        Statement(
            sid="DenyCustomerKeys",
            effect="Deny",
            actions=["s3:PutObject"],
            resources=objects,
            principals=every_principal,
            conditions=[("Null", "s3:x-amz-server-side-encryption-customer-algorithm", ["false"])],
        ),
    ]


def deny_insecure_transport(bucket: S3Bucket, objects: bool = True) -> Statement:
    return Statement(
        sid="DenyInsecureTransport",
        effect="Deny",
        actions=["s3:*"],
        resources=[bucket.arn, f"{bucket.arn}/*"] if objects else [bucket.arn],
        # Equivalent to "Principal": "*" for AWS; the emulator's log-delivery check mis-parses that form.
        principals={"AWS": ["*"]},
        conditions=[("Bool", "aws:SecureTransport", ["false"])],
    )


class Storage(Construct):
    """A private, versioned DICOM bucket (SSE-KMS with bucket key), a bucket for the host's boot
    bundle, and a bucket for their access logs.

    Secure defaults: public access blocked; object ownership enforced (no ACLs); any request not
    over TLS denied by bucket policy; writes encrypted with anything but the site key (another KMS
    key, SSE-S3, SSE-C) denied; noncurrent versions expire after a configurable period; incomplete
    multipart uploads aborted after 7 days; ``force_destroy`` as the stack decides; access to
    objects only through the grants this construct offers (``grant_dicom_objects``,
    ``grant_config_read``). The log bucket uses SSE-S3 because S3 server access logging cannot
    deliver to an SSE-KMS bucket.
    """

    def __init__(self, scope: Construct, id_: str, *, props: StorageProps):
        super().__init__(scope, id_)
        self.props = props
        self._buckets()
        if props.object_lock_days:
            self._object_lock()
        self._policies_and_logging()
        self._lifecycle()

    def _buckets(self) -> None:
        props = self.props
        self.log_bucket = S3Bucket(
            self, "log-bucket", bucket_prefix=f"{props.name}-logs-", force_destroy=props.force_destroy
        )
        self.log_bucket.override_logical_id("log_bucket")
        self.bucket = S3Bucket(
            self, "dicom-bucket", bucket_prefix=f"{props.name}-dicom-", force_destroy=props.force_destroy
        )
        # Stateful: renaming this logical ID would make Terraform destroy the DICOM files.
        self.bucket.override_logical_id("dicom_bucket")
        # The host's versioned boot bundle: user data stays small and names the bundle by its SHA-256.
        self.config_bucket = S3Bucket(
            self, "config-bucket", bucket_prefix=f"{props.name}-config-", force_destroy=props.force_destroy
        )
        self.config_bucket.override_logical_id("config_bucket")
        self.versioning: dict[str, S3BucketVersioningA] = {}
        site_key = EncryptionDefault(sse_algorithm="aws:kms", kms_master_key_id=props.key_arn)
        self._protect(self.log_bucket, "log", sse=EncryptionDefault(sse_algorithm="AES256"))
        self._protect(self.bucket, "dicom", sse=site_key)
        self._protect(self.config_bucket, "config", sse=site_key)

    def _object_lock(self) -> None:
        # Governance mode: every object version is kept for the period; an administrator with
        # s3:BypassGovernanceRetention can still remove one (compliance mode would forbid even that).
        S3BucketObjectLockConfigurationA(
            self,
            "dicom-object-lock",
            bucket=self.bucket.id,
            object_lock_enabled="Enabled",
            rule={"default_retention": {"mode": "GOVERNANCE", "days": self.props.object_lock_days}},
            depends_on=[self.versioning["dicom"]],
        )

    def _policies_and_logging(self) -> None:
        logged = {"dicom": self.bucket, "config": self.config_bucket}
        prefixes = {label: f"s3-access/{self.props.name}-{label}/" for label in logged}
        # One statement per source bucket: each may write its access logs under its own prefix only.
        self.log_statements = [
            deny_insecure_transport(self.log_bucket),
            *(
                Statement(
                    sid=f"S3ServerAccessLogs{label.capitalize()}",
                    actions=["s3:PutObject"],
                    resources=[f"{self.log_bucket.arn}/{prefixes[label]}*"],
                    principals={"Service": ["logging.s3.amazonaws.com"]},
                    conditions=[
                        ("ArnLike", "aws:SourceArn", [bucket.arn]),
                        ("StringEquals", "aws:SourceAccount", [self.props.account.account_id]),
                    ],
                )
                for label, bucket in logged.items()
            ),
        ]
        self.log_bucket_policy = S3BucketPolicy(
            self, "log-policy", bucket=self.log_bucket.id, policy=resource_policy_json(self.log_statements)
        )
        self.bucket_policies: dict[str, S3BucketPolicy] = {}
        for label, bucket in logged.items():
            self.bucket_policies[label] = S3BucketPolicy(
                self,
                f"{label}-policy",
                bucket=bucket.id,
                policy=resource_policy_json(
                    [deny_insecure_transport(bucket), *_deny_foreign_encryption(bucket, self.props.key_arn)]
                ),
            )
            S3BucketLoggingA(
                self,
                f"{label}-logging",
                bucket=bucket.id,
                target_bucket=self.log_bucket.id,
                target_prefix=prefixes[label],
                # S3 checks the target bucket grants the logging service access when logging is switched on.
                depends_on=[self.log_bucket_policy],
            )

    def _noncurrent_rule(self) -> S3BucketLifecycleConfigurationRule:
        return S3BucketLifecycleConfigurationRule(
            id="expire-noncurrent-versions",
            status="Enabled",
            filter=EVERY_OBJECT,
            noncurrent_version_expiration=[
                S3BucketLifecycleConfigurationRuleNoncurrentVersionExpiration(
                    noncurrent_days=self.props.noncurrent_version_expiration_days
                )
            ],
        )

    def _lifecycle(self) -> None:
        props = self.props
        dicom_rules = [self._noncurrent_rule(), ABORT_UPLOADS]
        if props.intelligent_tiering:
            dicom_rules.append(
                S3BucketLifecycleConfigurationRule(
                    id="intelligent-tiering",
                    status="Enabled",
                    filter=EVERY_OBJECT,
                    transition=[
                        S3BucketLifecycleConfigurationRuleTransition(
                            days=INTELLIGENT_TIERING_AFTER_DAYS, storage_class="INTELLIGENT_TIERING"
                        )
                    ],
                )
            )
        S3BucketLifecycleConfiguration(self, "dicom-lifecycle", bucket=self.bucket.id, rule=dicom_rules)
        S3BucketLifecycleConfiguration(
            self, "config-lifecycle", bucket=self.config_bucket.id, rule=[self._noncurrent_rule(), ABORT_UPLOADS]
        )
        S3BucketLifecycleConfiguration(
            self,
            "log-lifecycle",
            bucket=self.log_bucket.id,
            rule=[
                S3BucketLifecycleConfigurationRule(
                    id="expire-logs",
                    status="Enabled",
                    filter=EVERY_OBJECT,
                    expiration=[S3BucketLifecycleConfigurationRuleExpiration(days=props.log_retention_days)],
                    noncurrent_version_expiration=[
                        S3BucketLifecycleConfigurationRuleNoncurrentVersionExpiration(
                            noncurrent_days=LOG_NONCURRENT_DAYS
                        )
                    ],
                ),
                ABORT_UPLOADS,
            ],
        )

    def grant_dicom_objects(self, id_: str, role: IamRole) -> None:
        """Let ``role`` read, write and delete DICOM objects (and list the bucket); nothing else."""
        grant(
            self,
            id_,
            role,
            [
                Statement(sid="DicomObjects", actions=DICOM_OBJECT_ACTIONS, resources=[f"{self.bucket.arn}/*"]),
                Statement(sid="DicomBucket", actions=DICOM_BUCKET_ACTIONS, resources=[self.bucket.arn]),
            ],
            "dicom-objects",
        )

    def grant_config_read(self, id_: str, role: IamRole) -> None:
        """Let ``role`` read the boot bundles."""
        grant(
            self,
            id_,
            role,
            [Statement(sid="ReadBootBundle", actions=["s3:GetObject"], resources=[f"{self.config_bucket.arn}/*"])],
            "read-boot-bundle",
        )

    def allow_trail_delivery(self, key_prefix: str) -> None:
        """Let CloudTrail (this account's trails) write log files to the log bucket under ``key_prefix``."""
        account_id = self.props.account.account_id
        from_trails = [("StringEquals", "aws:SourceAccount", [account_id])]
        self.log_statements += [
            Statement(
                sid="CloudTrailAclCheck",
                actions=["s3:GetBucketAcl"],
                resources=[self.log_bucket.arn],
                principals={"Service": ["cloudtrail.amazonaws.com"]},
                conditions=from_trails,
            ),
            Statement(
                sid="CloudTrailWrite",
                actions=["s3:PutObject"],
                resources=[f"{self.log_bucket.arn}/{key_prefix}/AWSLogs/{account_id}/*"],
                principals={"Service": ["cloudtrail.amazonaws.com"]},
                conditions=from_trails,
            ),
        ]
        self.log_bucket_policy.policy = resource_policy_json(self.log_statements)

    def _protect(self, bucket: S3Bucket, id_: str, *, sse: EncryptionDefault) -> None:
        """Encryption, versioning, public access block and owner-enforced objects for one bucket."""
        S3BucketServerSideEncryptionConfigurationA(
            self,
            f"{id_}-encryption",
            bucket=bucket.id,
            rule=[
                S3BucketServerSideEncryptionConfigurationRuleA(
                    apply_server_side_encryption_by_default=sse, bucket_key_enabled=True
                )
            ],
        )
        self.versioning[id_] = S3BucketVersioningA(
            self, f"{id_}-versioning", bucket=bucket.id, versioning_configuration={"status": "Enabled"}
        )
        S3BucketPublicAccessBlock(
            self,
            f"{id_}-public-access-block",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
        )
        # Object events on the default EventBridge bus (no charge for S3 to publish them): rules can
        # alert on deletions or feed a downstream pipeline without touching the bucket again.
        S3BucketNotification(self, f"{id_}-events", bucket=bucket.id, eventbridge=True)
        S3BucketOwnershipControls(
            self, f"{id_}-ownership", bucket=bucket.id, rule={"object_ownership": "BucketOwnerEnforced"}
        )
