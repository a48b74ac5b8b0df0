"""The DICOM bucket and its access-log bucket."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cdktf import TerraformProvider
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
# What only the named roles may do with the studies (limit_dicom_objects): every way to read an
# object's content, write or delete one. Deletes are left out when destroy may delete the data
# (allow_data_destroy, never in prod): Terraform, as whoever runs it, then empties the bucket.
STUDY_READ_WRITE_ACTIONS = (
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:GetObjectAttributes",
    "s3:GetObjectVersionAttributes",
    "s3:GetObjectTorrent",
    "s3:PutObject",
    "s3:RestoreObject",
)
STUDY_DELETE_ACTIONS = ("s3:DeleteObject", "s3:DeleteObjectVersion")
# The plugin lists objects (ListObjects) and looks up the bucket's region.
DICOM_BUCKET_ACTIONS = ("s3:ListBucket", "s3:GetBucketLocation")
# What S3 replication reads from a source object version: the data (SSE-KMS objects included, which
# s3:GetObjectVersion would not cover), its ACL and its tags.
REPLICATION_SOURCE_OBJECT_ACTIONS = (
    "s3:GetObjectVersionForReplication",
    "s3:GetObjectVersionAcl",
    "s3:GetObjectVersionTagging",
)
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


def deny_foreign_encryption(bucket: S3Bucket, key_arn: str) -> list[Statement]:
    """Writes encrypted with anything but ``key_arn`` (the site key; the replica's key for the replica)
    are refused: another KMS key, SSE-S3, or a key the client brings (SSE-C, which the bucket owner
    could never read or rotate). A write without encryption headers gets the bucket default."""
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


def only_named_roles(bucket: S3Bucket, principal_arns: Sequence[str], force_destroy: bool) -> Statement:
    """The bucket policy statement that refuses reading, writing and deleting studies to every
    principal but ``principal_arns`` (deletes left to IAM when destroy may empty the bucket)."""
    return Statement(
        sid="OnlyNamedRolesTouchStudies",
        effect="Deny",
        actions=STUDY_READ_WRITE_ACTIONS + (() if force_destroy else STUDY_DELETE_ACTIONS),
        resources=[f"{bucket.arn}/*"],
        principals={"AWS": ["*"]},
        conditions=[("ArnNotLike", "aws:PrincipalArn", list(principal_arns))],
    )


def noncurrent_rule(days: int) -> S3BucketLifecycleConfigurationRule:
    """Replaced and deleted object versions expire ``days`` after they stop being current."""
    return S3BucketLifecycleConfigurationRule(
        id="expire-noncurrent-versions",
        status="Enabled",
        filter=EVERY_OBJECT,
        noncurrent_version_expiration=[
            S3BucketLifecycleConfigurationRuleNoncurrentVersionExpiration(noncurrent_days=days)
        ],
    )


def log_rules(retention_days: int) -> list[S3BucketLifecycleConfigurationRule]:
    """An access-log bucket's lifecycle: logs kept as long as the site's other logs."""
    return [
        S3BucketLifecycleConfigurationRule(
            id="expire-logs",
            status="Enabled",
            filter=EVERY_OBJECT,
            expiration=[S3BucketLifecycleConfigurationRuleExpiration(days=retention_days)],
            noncurrent_version_expiration=[
                S3BucketLifecycleConfigurationRuleNoncurrentVersionExpiration(noncurrent_days=LOG_NONCURRENT_DAYS)
            ],
        ),
        ABORT_UPLOADS,
    ]


def access_log_delivery(sid: str, log_bucket: S3Bucket, prefix: str, source: S3Bucket, account_id: str) -> Statement:
    """S3 server access logging may write ``source``'s logs under ``prefix`` in ``log_bucket``, nothing else."""
    return Statement(
        sid=sid,
        actions=["s3:PutObject"],
        resources=[f"{log_bucket.arn}/{prefix}*"],
        principals={"Service": ["logging.s3.amazonaws.com"]},
        conditions=[
            ("ArnLike", "aws:SourceArn", [source.arn]),
            ("StringEquals", "aws:SourceAccount", [account_id]),
        ],
    )


def protect(
    scope: Construct,
    id_: str,
    bucket: S3Bucket,
    *,
    sse: EncryptionDefault,
    provider: TerraformProvider | None = None,
) -> S3BucketVersioningA:
    """Encryption, versioning, public access block, object events and owner-enforced objects for one
    bucket (``provider``: the bucket's region when it is not the site's); returns its versioning."""
    S3BucketServerSideEncryptionConfigurationA(
        scope,
        f"{id_}-encryption",
        provider=provider,
        bucket=bucket.id,
        rule=[
            S3BucketServerSideEncryptionConfigurationRuleA(
                apply_server_side_encryption_by_default=sse, bucket_key_enabled=True
            )
        ],
    )
    versioning = S3BucketVersioningA(
        scope,
        f"{id_}-versioning",
        provider=provider,
        bucket=bucket.id,
        versioning_configuration={"status": "Enabled"},
    )
    S3BucketPublicAccessBlock(
        scope,
        f"{id_}-public-access-block",
        provider=provider,
        bucket=bucket.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
    )
    # Object events on the default EventBridge bus (no charge for S3 to publish them): rules can
    # alert on deletions or feed a downstream pipeline without touching the bucket again.
    S3BucketNotification(scope, f"{id_}-events", provider=provider, bucket=bucket.id, eventbridge=True)
    S3BucketOwnershipControls(
        scope,
        f"{id_}-ownership",
        provider=provider,
        bucket=bucket.id,
        rule={"object_ownership": "BucketOwnerEnforced"},
    )
    return versioning


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
    ``grant_config_read``, ``grant_replication_source``). The log bucket uses SSE-S3 because S3
    server access logging cannot deliver to an SSE-KMS bucket.
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
        self.versioning["log"] = protect(self, "log", self.log_bucket, sse=EncryptionDefault(sse_algorithm="AES256"))
        self.versioning["dicom"] = protect(self, "dicom", self.bucket, sse=site_key)
        self.versioning["config"] = protect(self, "config", self.config_bucket, sse=site_key)

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
                access_log_delivery(
                    f"S3ServerAccessLogs{label.capitalize()}",
                    self.log_bucket,
                    prefixes[label],
                    bucket,
                    self.props.account.account_id,
                )
                for label, bucket in logged.items()
            ),
        ]
        self.log_bucket_policy = S3BucketPolicy(
            self, "log-policy", bucket=self.log_bucket.id, policy=resource_policy_json(self.log_statements)
        )
        self.bucket_policies: dict[str, S3BucketPolicy] = {}
        statements = {
            label: [deny_insecure_transport(bucket), *deny_foreign_encryption(bucket, self.props.key_arn)]
            for label, bucket in logged.items()
        }
        self._dicom_statements = statements["dicom"]
        for label, bucket in logged.items():
            self.bucket_policies[label] = S3BucketPolicy(
                self, f"{label}-policy", bucket=bucket.id, policy=resource_policy_json(statements[label])
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

    def _lifecycle(self) -> None:
        props = self.props
        kept = noncurrent_rule(props.noncurrent_version_expiration_days)
        dicom_rules = [kept, ABORT_UPLOADS]
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
            self, "config-lifecycle", bucket=self.config_bucket.id, rule=[kept, ABORT_UPLOADS]
        )
        S3BucketLifecycleConfiguration(
            self, "log-lifecycle", bucket=self.log_bucket.id, rule=log_rules(props.log_retention_days)
        )

    def limit_dicom_objects(self, principal_arns: Sequence[str]) -> None:
        """Only ``principal_arns`` (roles; a role's sessions count as the role) read, write or delete
        DICOM objects, whatever any IAM policy allows: an administrator's, or a leaked key's."""
        self._dicom_statements.append(only_named_roles(self.bucket, principal_arns, self.props.force_destroy))
        self.bucket_policies["dicom"].policy = resource_policy_json(self._dicom_statements)

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

    def grant_replication_source(self, id_: str, role: IamRole) -> None:
        """Let S3 replication (through ``role``) read the DICOM bucket's configuration and object
        versions to copy; with Object Lock, their retention and legal hold too (so replicas keep them)."""
        object_actions = list(REPLICATION_SOURCE_OBJECT_ACTIONS)
        if self.props.object_lock_days:
            object_actions += ["s3:GetObjectRetention", "s3:GetObjectLegalHold"]
        grant(
            self,
            id_,
            role,
            [
                Statement(
                    sid="ReplicationConfiguration",
                    actions=["s3:GetReplicationConfiguration", "s3:ListBucket"],
                    resources=[self.bucket.arn],
                ),
                Statement(sid="ObjectVersionsToReplicate", actions=object_actions, resources=[f"{self.bucket.arn}/*"]),
            ],
            "replication-source",
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
