"""What AWS requires of a stack that the API emulator does not enforce, checked on the synthesized
JSON. The emulator (moto) evaluates no key policies and few service constraints, so a stack that
it applies happily can still fail on AWS at its first apply or its first host launch. Each rule is
named after the AWS rule it encodes and links AWS's documentation in its message; each is proven to
fail on a stack that breaks it (tests/test_aws_rules.py). The synth tests run them on every reference
profile, and the security gate on the stacks it scans (``problems``).

Rules so far (issue 19 lists the rest):
- ``autoscaling_role_can_use_the_volume_key``: an Auto Scaling group whose hosts' volumes are
  encrypted with a customer managed key launches them as its service-linked role, which the key
  policy must allow (the key operations, and CreateGrant for AWS resources);
- ``trail_comes_after_its_delivery_policies``: CreateTrail checks the bucket and topic policies
  when it runs, so the trail must depend on them in the JSON (cdktf's node.add_dependency does not
  reach it; only ``depends_on`` does);
- ``backup_job_after_the_database_window``: the AWS Backup job of the database is scheduled after
  an explicit database backup window, with explicit start and completion windows;
- ``user_data_within_16_kb``: EC2 refuses user data over 16 KB; each value Terraform fills in is
  counted as 256 characters (an ARN or endpoint is shorter);
- ``parameter_group_family_matches_the_engine``: RDS refuses a parameter group of another family
  than the instance's engine and major version.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from tools.maint.tfjson import Address, Stack

ASG_KEY_DOC = "https://docs.aws.amazon.com/autoscaling/ec2/userguide/key-policy-requirements-EBS-encryption.html"
TRAIL_DOC = "https://docs.aws.amazon.com/awscloudtrail/latest/userguide/create-s3-bucket-policy-for-cloudtrail.html"
BACKUP_DOC = "https://docs.aws.amazon.com/aws-backup/latest/devguide/creating-a-backup-plan.html"
ASG_KEY_ACTIONS = {"kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"}


def _key_policy(stack: Stack, key: Address) -> list[Mapping[str, Any]]:
    policy = stack.body(key).get("policy")
    if not isinstance(policy, str):
        return []
    statements = json.loads(policy).get("Statement", [])
    return [statements] if isinstance(statements, dict) else list(statements)


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def autoscaling_role_can_use_the_volume_key(stack: Stack) -> Iterator[str]:
    for group, body in stack.of_type("aws_autoscaling_group").items():
        templates = stack.targets(body.get("launch_template", {}), "aws_launch_template")
        keys = sorted(
            {
                key
                for template in templates
                for mapping in stack.body(template).get("block_device_mappings", [])
                for key in stack.targets(mapping.get("ebs", {}).get("kms_key_id", ""), "aws_kms_key")
            }
        )
        if not keys:
            continue
        role = body.get("service_linked_role_arn")
        if not role:
            yield (
                f"{group.stable}: launches hosts with volumes encrypted by {keys[0].stable} as the account's default "
                f"Auto Scaling role, which the key policy cannot name before it exists; give the group a "
                f"service-linked role of its own and allow it in the key policy ({ASG_KEY_DOC})"
            )
            continue
        for key in keys:
            statements = [s for s in _key_policy(stack, key) if role in _listed(s.get("Principal", {}).get("AWS"))]
            actions = {a for s in statements for a in _listed(s.get("Action"))}
            grant = [
                s
                for s in statements
                if "kms:CreateGrant" in _listed(s.get("Action"))
                and str(s.get("Condition", {}).get("Bool", {}).get("kms:GrantIsForAWSResource")).lower() == "true"
            ]
            missing = sorted(ASG_KEY_ACTIONS - actions)
            if missing or not grant:
                what = ", ".join(missing + ([] if grant else ["kms:CreateGrant with kms:GrantIsForAWSResource"]))
                yield (
                    f"{key.stable}: the key policy does not let {group.stable}'s service-linked role use it for the "
                    f"hosts' volumes ({what}); every launch fails with Client.InternalError ({ASG_KEY_DOC})"
                )


def trail_comes_after_its_delivery_policies(stack: Stack) -> Iterator[str]:
    for trail, body in stack.of_type("aws_cloudtrail").items():
        after = set(stack.depends_on(trail))
        buckets = stack.targets(body.get("s3_bucket_name", ""), "aws_s3_bucket")
        needed = [
            policy
            for policy, policy_body in stack.of_type("aws_s3_bucket_policy").items()
            if set(stack.targets(policy_body.get("bucket", ""), "aws_s3_bucket")) & set(buckets)
        ]
        topics = stack.targets(body.get("sns_topic_name", ""), "aws_sns_topic")
        needed += [
            policy
            for policy, policy_body in stack.of_type("aws_sns_topic_policy").items()
            if set(stack.targets(policy_body.get("arn", ""), "aws_sns_topic")) & set(topics)
        ]
        for policy in needed:
            if policy not in after:
                yield (
                    f"{trail.stable}: does not depend on {policy.stable}; CreateTrail checks it when it runs and fails "
                    f"with InsufficientS3BucketPolicyException or InsufficientSnsTopicPolicyException ({TRAIL_DOC})"
                )


_WINDOW = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")
_CRON = re.compile(r"^cron\((\d+) (\d+) ")


def backup_job_after_the_database_window(stack: Stack) -> Iterator[str]:
    plans = stack.of_type("aws_backup_plan")
    if not plans:
        return
    for db, body in stack.of_type("aws_db_instance").items():
        window = _WINDOW.match(str(body.get("backup_window", "")))
        if not window:
            yield (
                f"{db.stable}: no backup_window, so AWS picks 30 minutes anywhere in an 8-hour block, "
                f"which the AWS Backup job may hit ({BACKUP_DOC})"
            )
            continue
        ends = int(window[3]) * 60 + int(window[4])
        starts = int(window[1]) * 60 + int(window[2])
        for plan, plan_body in plans.items():
            for rule in plan_body.get("rule", []):
                cron = _CRON.match(str(rule.get("schedule", "")))
                if not (rule.get("start_window") and rule.get("completion_window")):
                    yield (
                        f"{plan.stable}: rule {rule.get('rule_name')} has no explicit start and completion windows "
                        f"({BACKUP_DOC})"
                    )
                if not cron:
                    continue
                at = int(cron[2]) * 60 + int(cron[1])
                if starts <= at < ends or (ends < starts and (at >= starts or at < ends)):
                    yield (
                        f"{plan.stable}: the backup job at {cron[2]}:{cron[1]} UTC falls in {db.stable}'s backup "
                        f"window ({BACKUP_DOC})"
                    )


USER_DATA_DOC = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/user-data.html"
RDS_FAMILY_DOC = "https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/USER_WorkingWithParamGroups.html"
USER_DATA_LIMIT = 16 * 1024
# Every ${...} Terraform fills in at apply, counted at this length (ARNs, endpoints, DNS names are shorter).
TOKEN_LENGTH = 256
_INTERPOLATION = re.compile(r"\$\{[^{}]*\}")


def user_data_within_16_kb(stack: Stack) -> Iterator[str]:
    for template, body in stack.of_type("aws_launch_template").items():
        text = str(body.get("user_data", ""))
        gzipped = text.startswith("${base64gzip(") and text.endswith(")}")
        if gzipped:  # the JSON string literal inside base64gzip("...")
            text = json.loads(text[len("${base64gzip(") : -len(")}")])
        filled = _INTERPOLATION.sub("x" * TOKEN_LENGTH, text).encode()
        size = len(gzip.compress(filled, 9)) if gzipped else len(filled)  # otherwise: as written, at most
        if size > USER_DATA_LIMIT:
            yield f"{template.stable}: user data of {size} bytes, over EC2's {USER_DATA_LIMIT} ({USER_DATA_DOC})"


def parameter_group_family_matches_the_engine(stack: Stack) -> Iterator[str]:
    for db, body in stack.of_type("aws_db_instance").items():
        engine, version = str(body.get("engine", "")), str(body.get("engine_version", ""))
        for group in stack.targets(body.get("parameter_group_name", ""), "aws_db_parameter_group"):
            family = str(stack.body(group).get("family", ""))
            want = f"{engine}{version.split('.')[0]}"
            if engine == "postgres" and family != want:
                yield (
                    f"{group.stable}: family {family} for {db.stable}'s {engine} {version}; RDS refuses it "
                    f"(want {want}) ({RDS_FAMILY_DOC})"
                )


RULES: dict[str, Callable[[Stack], Iterator[str]]] = {
    "autoscaling_role_can_use_the_volume_key": autoscaling_role_can_use_the_volume_key,
    "trail_comes_after_its_delivery_policies": trail_comes_after_its_delivery_policies,
    "backup_job_after_the_database_window": backup_job_after_the_database_window,
    "user_data_within_16_kb": user_data_within_16_kb,
    "parameter_group_family_matches_the_engine": parameter_group_family_matches_the_engine,
}


def problems(data: Mapping[str, Any]) -> list[str]:
    """Every rule on one synthesized stack's JSON; each line names the rule."""
    stack = Stack.from_json(data)
    return [f"{name}: {line}" for name, rule in RULES.items() for line in rule(stack)]
