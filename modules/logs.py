"""Where the site reports: encrypted CloudWatch log groups and SNS topics."""

from __future__ import annotations

from cdktf_cdktf_provider_aws.cloudwatch_log_group import CloudwatchLogGroup
from cdktf_cdktf_provider_aws.sns_topic import SnsTopic
from cdktf_cdktf_provider_aws.sns_topic_policy import SnsTopicPolicy
from constructs import Construct

from modules.policy import Statement, resource_policy_json


def encrypted_log_group(
    scope: Construct, id_: str, *, name: str, key_arn: str, retention_days: int
) -> CloudwatchLogGroup:
    """A log group encrypted with the site key, with finite retention."""
    return CloudwatchLogGroup(scope, id_, name=name, kms_key_id=key_arn, retention_in_days=retention_days)


def encrypted_topic(
    scope: Construct, *, name: str, key_arn: str, publisher: str, sid: str, account_id: str
) -> tuple[SnsTopic, SnsTopicPolicy]:
    """An SNS topic encrypted with the site key, to which only the AWS service ``publisher``
    (for example ``cloudwatch.amazonaws.com``), acting for this account, may publish; and its policy
    (a publisher that checks the policy when it is set up must come after it)."""
    topic = SnsTopic(scope, "topic", name=name, kms_master_key_id=key_arn)
    policy = SnsTopicPolicy(
        scope,
        "topic-policy",
        arn=topic.arn,
        policy=resource_policy_json(
            [
                Statement(
                    sid=sid,
                    actions=["sns:Publish"],
                    resources=[topic.arn],
                    principals={"Service": [publisher]},
                    conditions=[("StringEquals", "aws:SourceAccount", [account_id])],
                )
            ]
        ),
    )
    return topic, policy
