"""Optional audit and recovery extras: a CloudTrail trail with S3 data events for the DICOM bucket,
and an AWS Backup plan for the database."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cdktf import TerraformResource
from cdktf_cdktf_provider_aws.backup_plan import BackupPlan, BackupPlanRule, BackupPlanRuleLifecycle
from cdktf_cdktf_provider_aws.backup_selection import BackupSelection
from cdktf_cdktf_provider_aws.backup_vault import BackupVault
from cdktf_cdktf_provider_aws.cloudtrail import (
    Cloudtrail,
    CloudtrailEventSelector,
    CloudtrailEventSelectorDataResource,
)
from constructs import Construct

from config.facts import TRAIL_PREFIX
from modules.account import Account
from modules.logs import encrypted_log_group, encrypted_topic
from modules.policy import Statement, service_role

BACKUP_POLICY = "service-role/AWSBackupServiceRolePolicyForBackup"
# Daily at 05:00 UTC, after the database's own backup window (DB_BACKUP_WINDOW, 03:00-03:30) and
# before its maintenance window; it must start within an hour and finish within three.
BACKUP_SCHEDULE = "cron(0 5 * * ? *)"
BACKUP_START_MINUTES = 60
BACKUP_COMPLETION_MINUTES = 180


@dataclass(frozen=True)
class TrailProps:
    name: str
    account: Account
    key_arn: str
    log_bucket_name: str
    dicom_bucket_arn: str
    log_retention_days: int
    # Policies the trail's delivery needs in place first (CreateTrail checks them when it runs and
    # fails with InsufficientS3BucketPolicyException otherwise): the log bucket's policy.
    delivery_policies: Sequence[TerraformResource] = ()


class DataEventTrail(Construct):
    """CloudTrail trail recording management events and every object-level call on the DICOM bucket.

    Secure defaults: log files encrypted with the site key and validated (digest files); delivered to
    the access-log bucket under ``cloudtrail/``, to an encrypted CloudWatch log group (for alarms and
    queries) and announced on an encrypted SNS topic; multi-region.
    """

    # Where the trail writes in the log bucket: the bucket's owner grants delivery under it.
    key_prefix = TRAIL_PREFIX

    def __init__(self, scope: Construct, id_: str, *, props: TrailProps):
        super().__init__(scope, id_)
        acct = props.account
        self.log_group = encrypted_log_group(
            self,
            "logs",
            name=f"/{props.name}/cloudtrail",
            key_arn=props.key_arn,
            retention_days=props.log_retention_days,
        )
        role = service_role(
            self,
            "logs",
            name=f"{props.name}-cloudtrail-logs",
            service="cloudtrail.amazonaws.com",
            # Only this trail may assume it (confused-deputy protection).
            conditions=[
                ("StringEquals", "aws:SourceAccount", [acct.account_id]),
                (
                    "ArnLike",
                    "aws:SourceArn",
                    [f"arn:{acct.partition}:cloudtrail:{acct.region}:{acct.account_id}:trail/{props.name}-audit"],
                ),
            ],
            inline=[
                Statement(actions=["logs:CreateLogStream", "logs:PutLogEvents"], resources=[f"{self.log_group.arn}:*"])
            ],
            inline_name="write-trail-logs",
        )
        self.topic, topic_policy = encrypted_topic(
            self,
            name=f"{props.name}-cloudtrail",
            key_arn=props.key_arn,
            publisher="cloudtrail.amazonaws.com",
            sid="CloudTrailPublishes",
            account_id=acct.account_id,
        )
        self.trail = Cloudtrail(
            self,
            "trail",
            name=f"{props.name}-audit",
            s3_bucket_name=props.log_bucket_name,
            s3_key_prefix=self.key_prefix,
            kms_key_id=props.key_arn,
            enable_log_file_validation=True,
            is_multi_region_trail=True,
            include_global_service_events=True,
            cloud_watch_logs_group_arn=f"{self.log_group.arn}:*",
            cloud_watch_logs_role_arn=role.arn,
            sns_topic_name=self.topic.name,
            event_selector=[
                CloudtrailEventSelector(
                    read_write_type="All",
                    include_management_events=True,
                    data_resource=[
                        CloudtrailEventSelectorDataResource(
                            type="AWS::S3::Object", values=[f"{props.dicom_bucket_arn}/"]
                        )
                    ],
                )
            ],
            # The topic's policy too: CreateTrail fails with InsufficientSnsTopicPolicyException without it.
            depends_on=[*props.delivery_policies, topic_policy],
        )


@dataclass(frozen=True)
class BackupProps:
    name: str
    account: Account
    key_arn: str
    database_arn: str
    retention_days: int


class DatabaseBackup(Construct):
    """A daily AWS Backup of the database into an encrypted vault, kept ``retention_days``."""

    def __init__(self, scope: Construct, id_: str, *, props: BackupProps):
        super().__init__(scope, id_)
        self.vault = BackupVault(self, "vault", name=f"{props.name}-vault", kms_key_arn=props.key_arn)
        self.plan = BackupPlan(
            self,
            "plan",
            name=f"{props.name}-daily",
            rule=[
                BackupPlanRule(
                    rule_name="daily",
                    target_vault_name=self.vault.name,
                    schedule=BACKUP_SCHEDULE,
                    start_window=BACKUP_START_MINUTES,
                    completion_window=BACKUP_COMPLETION_MINUTES,
                    lifecycle=BackupPlanRuleLifecycle(delete_after=props.retention_days),
                )
            ],
        )
        role = service_role(
            self,
            "backup",
            name=f"{props.name}-backup",
            # No aws:SourceAccount here: AWS Backup assumes the role it was handed (iam:PassRole) and
            # does not send the key, so a condition on it would stop every backup.
            service="backup.amazonaws.com",
            managed_policy_arns=[f"arn:{props.account.partition}:iam::aws:policy/{BACKUP_POLICY}"],
        )
        BackupSelection(
            self,
            "selection",
            name=f"{props.name}-database",
            plan_id=self.plan.id,
            iam_role_arn=role.arn,
            resources=[props.database_arn],
        )
