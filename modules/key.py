"""Customer-managed KMS keys: how each is built (``CustomerKey``) and the site's key."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cdktf import TerraformProvider
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.kms_alias import KmsAlias
from cdktf_cdktf_provider_aws.kms_key import KmsKey
from constructs import Construct

from modules.account import Account
from modules.policy import Statement, grant, resource_policy_json

# Key administration and use for the account's IAM principals, spelled out so no statement
# carries a bare "kms:*" (IAM policies still decide which principal may do what).
ACCOUNT_KEY_ACTIONS = (
    "kms:Create*",
    "kms:Describe*",
    "kms:Enable*",
    "kms:List*",
    "kms:Put*",
    "kms:Update*",
    "kms:Revoke*",
    "kms:Disable*",
    "kms:Get*",
    "kms:Delete*",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
    "kms:RotateKeyOnDemand",
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncrypt*",
    "kms:GenerateDataKey*",
    "kms:CreateGrant",
    "kms:RetireGrant",
)
# AWS's longest waiting period: a key scheduled for deletion by mistake can be cancelled for 30 days.
DELETION_WINDOW_DAYS = 30
LOGS_KEY_ACTIONS = ("kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*")


def only_named_decrypt(bucket_arn: str, principal_arns: Sequence[str]) -> Statement:
    """The key policy statement that refuses decrypting a bucket's objects (the key's encryption
    context through S3 names the bucket: bucket keys are on) to every principal but
    ``principal_arns``, whatever IAM allows: the bucket policy's twin, so loosening one of them
    alone exposes nothing."""
    return Statement(
        sid="OnlyNamedRolesDecryptStudies",
        effect="Deny",
        actions=["kms:Decrypt"],
        principals={"AWS": ["*"]},
        conditions=[
            ("ArnLike", "kms:EncryptionContext:aws:s3:arn", [bucket_arn, f"{bucket_arn}/*"]),
            ("ArnNotLike", "aws:PrincipalArn", list(principal_arns)),
        ],
    )


class CustomerKey:
    """A customer-managed symmetric KMS key with rotation on, its key policy and, if named, its alias.

    The policy starts with the account's administration of the key (IAM policies then decide who
    may use it), then ``statements``; the key's owner adds its own with ``allow``. Not a construct:
    the key and the alias (id ``alias``) are built in ``scope``, so their construct paths and hence
    their Terraform addresses are the owner's.
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        account: Account,
        description: str,
        logical_id: str,
        statements: Sequence[Statement] = (),
        alias_name: str | None = None,
        provider: TerraformProvider | None = None,
        deletion_window_days: int = DELETION_WINDOW_DAYS,
    ):
        self.statements = [
            Statement(
                sid="AccountAdministersAndDelegates",
                actions=ACCOUNT_KEY_ACTIONS,
                principals={"AWS": [f"arn:{account.partition}:iam::{account.account_id}:root"]},
            ),
            *statements,
        ]
        self.key = KmsKey(
            scope,
            id_,
            provider=provider,
            description=description,
            enable_key_rotation=True,
            deletion_window_in_days=deletion_window_days,
            policy=resource_policy_json(self.statements),
        )
        # Stateful: every byte encrypted under the key depends on it; keep the logical ID stable.
        self.key.override_logical_id(logical_id)
        self.alias = (
            None
            if alias_name is None
            else KmsAlias(scope, "alias", provider=provider, name=f"alias/{alias_name}", target_key_id=self.key.key_id)
        )
        self.arn = self.key.arn

    def allow(self, *statements: Statement) -> None:
        """Append ``statements`` to the key policy."""
        self.statements.extend(statements)
        self.key.policy = resource_policy_json(self.statements)


@dataclass(frozen=True)
class SiteKeyProps:
    name: str
    account: Account
    deletion_window_days: int = DELETION_WINDOW_DAYS


class SiteKey(Construct):
    """One symmetric KMS key (rotation on) for S3, RDS, EBS, Secrets Manager and CloudWatch Logs.

    Secure defaults: yearly automatic rotation; 30-day deletion window; the key policy lets the
    account's IAM policies grant use, and CloudWatch Logs use it only for this account's log groups.
    """

    def __init__(self, scope: Construct, id_: str, *, props: SiteKeyProps):
        super().__init__(scope, id_)
        self.account = acct = props.account
        self.customer_key = CustomerKey(
            self,
            "key",
            account=acct,
            description=f"{props.name}: Orthweb site data key",
            logical_id="site_key",
            statements=[
                Statement(
                    sid="CloudWatchLogsUse",
                    actions=LOGS_KEY_ACTIONS,
                    principals={"Service": [f"logs.{acct.region}.amazonaws.com"]},
                    conditions=[
                        (
                            "ArnLike",
                            "kms:EncryptionContext:aws:logs:arn",
                            [f"arn:{acct.partition}:logs:{acct.region}:{acct.account_id}:log-group:*"],
                        )
                    ],
                ),
            ],
            alias_name=props.name,
            deletion_window_days=props.deletion_window_days,
        )
        self.key, self.alias, self.arn = self.customer_key.key, self.customer_key.alias, self.customer_key.arn

    def grant_use(self, id_: str, role: IamRole, *, actions: Sequence[str], via_services: Sequence[str]) -> None:
        """Let ``role`` use the key for ``actions``, only through the named AWS services (``kms:ViaService``):
        the role can have Secrets Manager or S3 decrypt for it, never call KMS with the key itself."""
        acct = self.account
        grant(
            self,
            id_,
            role,
            [
                Statement(
                    sid="UseSiteKeyThroughServices",
                    actions=actions,
                    resources=[self.arn],
                    conditions=[
                        (
                            "StringEquals",
                            "kms:ViaService",
                            [f"{svc}.{acct.region}.amazonaws.com" for svc in via_services],
                        )
                    ],
                )
            ],
            f"use-site-key-{id_}",
        )

    def limit_study_decrypt(self, bucket_arn: str, principal_arns: Sequence[str]) -> None:
        """Only ``principal_arns`` decrypt the DICOM bucket's objects (only_named_decrypt)."""
        self.customer_key.allow(only_named_decrypt(bucket_arn, principal_arns))

    def allow_alarm_notifications(self) -> None:
        """Let CloudWatch (this account's alarms) publish to SNS topics encrypted with the key."""
        acct = self.account
        self.customer_key.allow(
            Statement(
                sid="CloudWatchAlarmsPublishToEncryptedTopic",
                actions=["kms:GenerateDataKey*", "kms:Decrypt"],
                principals={"Service": ["cloudwatch.amazonaws.com"]},
                conditions=[("StringEquals", "aws:SourceAccount", [acct.account_id])],
            )
        )

    def allow_autoscaling(self, role_arn: str) -> None:
        """Let an Auto Scaling group's service-linked role use the key for the encrypted volumes of
        the hosts it launches: the key operations, and grants only for AWS resources (EC2 attaches
        the volume through one). AWS: "Required KMS key policy for use with encrypted volumes"
        (https://docs.aws.amazon.com/autoscaling/ec2/userguide/key-policy-requirements-EBS-encryption.html)."""
        self.customer_key.allow(
            Statement(
                sid="AutoScalingUsesKeyForHostVolumes",
                actions=["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"],
                principals={"AWS": [role_arn]},
            ),
            Statement(
                sid="AutoScalingGrantsForHostVolumes",
                actions=["kms:CreateGrant"],
                principals={"AWS": [role_arn]},
                conditions=[("Bool", "kms:GrantIsForAWSResource", ["true"])],
            ),
        )

    def allow_cloudtrail(self) -> None:
        """Let CloudTrail encrypt this account's trail logs with the key and publish to encrypted topics."""
        acct = self.account
        self.customer_key.allow(
            Statement(
                sid="CloudTrailEncryptsLogs",
                actions=["kms:GenerateDataKey*", "kms:DescribeKey"],
                principals={"Service": ["cloudtrail.amazonaws.com"]},
                conditions=[
                    (
                        "StringLike",
                        "kms:EncryptionContext:aws:cloudtrail:arn",
                        [f"arn:{acct.partition}:cloudtrail:*:{acct.account_id}:trail/*"],
                    )
                ],
            ),
            # Publishing to the trail's encrypted SNS topic.
            Statement(
                sid="CloudTrailPublishesToEncryptedTopic",
                actions=["kms:GenerateDataKey*", "kms:Decrypt"],
                principals={"Service": ["cloudtrail.amazonaws.com"]},
                conditions=[("StringEquals", "aws:SourceAccount", [acct.account_id])],
            ),
        )
