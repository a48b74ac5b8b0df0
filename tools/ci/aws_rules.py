"""What AWS requires of a stack that the API emulator does not enforce, checked on the synthesized
JSON. The emulator (moto) evaluates no key policies and few service constraints, so a stack that
it applies happily can still fail on AWS at its first apply or its first host launch. Each rule is
named after the AWS rule it encodes and links AWS's documentation in its message; each is proven to
fail on a stack that breaks it (tests/test_aws_rules.py). The synth tests run them on every reference
profile, and the security gate on the stacks it scans (``problems``).

The rules (docs/security.md maps them to what the emulator cannot see):
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
  than the instance's engine and major version;
- ``key_policy_admits_the_services_that_use_it``: CloudWatch Logs (scoped by its encryption
  context), every service publishing to an encrypted topic (and the topic policy letting it),
  CloudTrail, and delegation to IAM for the services that use a key on a role's behalf;
- ``replication_can_use_both_keys``: SSE-KMS objects asked for, a replica key in the destination's
  region, the replication role allowed to decrypt with one key and encrypt with the other;
- ``log_buckets_admit_their_delivery_service``: S3 server access logs (policy for the prefix and
  source, SSE-S3 only), CloudTrail (ACL check and AWSLogs/ write), load balancer access logs;
- ``names_within_aws_limits``: every name at apply, the random suffix at full width, within its
  service's length and form;
- ``db_class_is_asked_of_rds``: the plan asks RDS whether it offers the DB class for the engine;
- ``ec2_recovery_only_where_supported``: the recover action only on types EC2 can recover;
- ``alarm_metrics_exist``: each alarm's metric and dimensions are published (by AWS, a metric
  filter of the stack, or the host's CloudWatch agent).
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from config.facts import HOST_AGENT_METRICS, HOST_METRICS_NAMESPACE, NAME_SUFFIX_BYTES, ec2_can_recover
from tools.ops.tfjson import Address, Stack, listed

ASG_KEY_DOC = "https://docs.aws.amazon.com/autoscaling/ec2/userguide/key-policy-requirements-EBS-encryption.html"
TRAIL_DOC = "https://docs.aws.amazon.com/awscloudtrail/latest/userguide/create-s3-bucket-policy-for-cloudtrail.html"
BACKUP_DOC = "https://docs.aws.amazon.com/aws-backup/latest/devguide/creating-a-backup-plan.html"
ASG_KEY_ACTIONS = {"kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"}


def _key_policy(stack: Stack, key: Address) -> list[Mapping[str, Any]]:
    return stack.policy_statements(stack.body(key).get("policy"))


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
            statements = [s for s in _key_policy(stack, key) if role in listed(s.get("Principal", {}).get("AWS"))]
            actions = {a for s in statements for a in listed(s.get("Action"))}
            grant = [
                s
                for s in statements
                if "kms:CreateGrant" in listed(s.get("Action"))
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


def gzipped_template(expression: str) -> str | None:
    """The text inside ``${base64gzip("...")}`` with every value Terraform fills in at apply written
    as TOKEN_LENGTH characters (an interpolation may hold quotes of its own: join(" ", ...)); None
    when ``expression`` is not one."""
    if not (expression.startswith("${base64gzip(") and expression.endswith(")}")):
        return None
    literal = _INTERPOLATION.sub("x" * TOKEN_LENGTH, expression[len("${base64gzip(") : -len(")}")])
    return str(json.loads(literal))


def user_data_within_16_kb(stack: Stack) -> Iterator[str]:
    for template, body in stack.of_type("aws_launch_template").items():
        text = str(body.get("user_data", ""))
        inner = gzipped_template(text)
        gzipped = inner is not None
        filled = _INTERPOLATION.sub("x" * TOKEN_LENGTH, inner if inner is not None else text).encode()
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


# -- key policies: every AWS service that uses a key for this stack ---------------------------------

LOGS_KEY_DOC = "https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/encrypt-log-data-kms.html"
SNS_KEY_DOC = "https://docs.aws.amazon.com/sns/latest/dg/sns-key-management.html"
TRAIL_KEY_DOC = "https://docs.aws.amazon.com/awscloudtrail/latest/userguide/create-kms-key-policy-for-cloudtrail.html"
DELEGATION_DOC = "https://docs.aws.amazon.com/kms/latest/developerguide/key-policy-default.html"
REPLICATION_KMS_DOC = "https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication-config-for-kms-objects.html"
# The actions each user needs, as concrete actions a statement's patterns must cover.
LOGS_NEEDS = ("kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:GenerateDataKey", "kms:DescribeKey")
PUBLISHER_NEEDS = ("kms:GenerateDataKey", "kms:Decrypt")
TRAIL_NEEDS = ("kms:GenerateDataKey", "kms:DescribeKey")
# What an IAM principal of the account needs from the key policy when the policy delegates to IAM
# (services calling on a role's behalf: S3, Secrets Manager, RDS, AWS Backup, EBS).
DELEGATED_NEEDS = ("kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey", "kms:CreateGrant", "kms:DescribeKey")
# Resource types that use a key on a role's (or the caller's) behalf.
DELEGATED_USERS = (
    "aws_s3_bucket_server_side_encryption_configuration",
    "aws_secretsmanager_secret",
    "aws_db_instance",
    "aws_backup_vault",
    "aws_launch_template",
    "aws_instance",
)


def _principals(statement: Mapping[str, Any], kind: str) -> list[str]:
    principal = statement.get("Principal", {})
    if principal == "*":
        return ["*"]
    return listed(principal.get(kind)) if isinstance(principal, Mapping) else []


def _covers(statements: list[Mapping[str, Any]], needs: tuple[str, ...]) -> list[str]:
    """The needed actions no Allow statement of ``statements`` grants."""
    granted = [a for s in statements if s.get("Effect", "Allow") == "Allow" for a in listed(s.get("Action"))]
    return [need for need in needs if not any(fnmatch.fnmatchcase(need, pattern) for pattern in granted)]


def _for_service(statements: list[Mapping[str, Any]], service: str) -> list[Mapping[str, Any]]:
    return [
        s
        for s in statements
        if s.get("Effect", "Allow") == "Allow"
        and any(fnmatch.fnmatchcase(p, service) for p in _principals(s, "Service"))
    ]


def _condition_keys(statement: Mapping[str, Any]) -> set[str]:
    return {key for block in statement.get("Condition", {}).values() for key in block}


def _topic_publishers(stack: Stack, topic: Address) -> dict[str, str]:
    """The AWS services this stack makes publish to ``topic`` -> what makes them."""
    found: dict[str, str] = {}
    for alarm, body in stack.of_type("aws_cloudwatch_metric_alarm").items():
        actions = [body.get(k) for k in ("alarm_actions", "ok_actions", "insufficient_data_actions")]
        if topic in stack.targets(actions, "aws_sns_topic"):
            found.setdefault("cloudwatch.amazonaws.com", alarm.stable)
    for trail, body in stack.of_type("aws_cloudtrail").items():
        if topic in stack.targets(body.get("sns_topic_name", ""), "aws_sns_topic"):
            found.setdefault("cloudtrail.amazonaws.com", trail.stable)
    for rtype, service, attr in (
        ("aws_backup_vault_notifications", "backup.amazonaws.com", "sns_topic_arn"),
        ("aws_cloudwatch_event_target", "events.amazonaws.com", "arn"),
        ("aws_db_event_subscription", "events.rds.amazonaws.com", "sns_topic"),
        ("aws_s3_bucket_notification", "s3.amazonaws.com", "topic"),
    ):
        for user, body in stack.of_type(rtype).items():
            if topic in stack.targets(body.get(attr, body), "aws_sns_topic"):
                found.setdefault(service, user.stable)
    return found


def _key_users(stack: Stack, key: Address, rtype: str, attr: str = "") -> list[Address]:
    """Resources of ``rtype`` whose ``attr`` (or, without one, anything in them) names ``key``."""
    return [
        user
        for user, body in stack.of_type(rtype).items()
        if key in stack.targets(body.get(attr, "") if attr else body, "aws_kms_key")
    ]


def _missing_for_service(mine: list[Mapping[str, Any]], needs: tuple[str, ...], context: str) -> list[str]:
    """What a service's statements lack: actions of ``needs`` and the encryption context condition
    (``kms:EncryptionContext:<context>``) the service's documentation asks for."""
    missing = _covers(mine, needs)
    if not any(f"kms:EncryptionContext:{context}" in _condition_keys(s) for s in mine):
        missing.append(f"a kms:EncryptionContext:{context} condition")
    return missing


def _logs_use(stack: Stack, key: Address, statements: list[Mapping[str, Any]]) -> Iterator[str]:
    groups = _key_users(stack, key, "aws_cloudwatch_log_group", "kms_key_id")
    if not groups:
        return
    mine = _for_service(statements, "logs.*.amazonaws.com") or _for_service(statements, "logs.amazonaws.com")
    missing = _missing_for_service(mine, LOGS_NEEDS, "aws:logs:arn")
    if missing:
        yield (
            f"{key.stable}: encrypts {len(groups)} log group(s) ({groups[0].stable}, ...) but its policy does "
            f"not let CloudWatch Logs use it ({', '.join(missing)}); CreateLogGroup fails with "
            f"AccessDeniedException ({LOGS_KEY_DOC})"
        )


def _publishers_use(stack: Stack, key: Address, statements: list[Mapping[str, Any]]) -> Iterator[str]:
    for topic in _key_users(stack, key, "aws_sns_topic", "kms_master_key_id"):
        policies = [
            s
            for policy, body in stack.of_type("aws_sns_topic_policy").items()
            if topic in stack.targets(body.get("arn", ""), "aws_sns_topic")
            for s in stack.policy_statements(body.get("policy"))
        ]
        for service, user in sorted(_topic_publishers(stack, topic).items()):
            missing = _covers(_for_service(statements, service), PUBLISHER_NEEDS)
            if missing:
                yield (
                    f"{key.stable}: encrypts {topic.stable}, to which {service} publishes ({user}), but its "
                    f"policy does not let {service} use it ({', '.join(missing)}); the messages are dropped "
                    f"({SNS_KEY_DOC})"
                )
            if _covers(_for_service(policies, service), ("sns:Publish",)):
                yield (
                    f"{topic.stable}: {service} publishes to it ({user}) but the topic policy does not allow "
                    f"it sns:Publish; the messages are dropped ({SNS_KEY_DOC})"
                )


def _trail_use(stack: Stack, key: Address, statements: list[Mapping[str, Any]]) -> Iterator[str]:
    for trail in _key_users(stack, key, "aws_cloudtrail", "kms_key_id"):
        missing = _missing_for_service(
            _for_service(statements, "cloudtrail.amazonaws.com"), TRAIL_NEEDS, "aws:cloudtrail:arn"
        )
        if missing:
            yield (
                f"{key.stable}: encrypts {trail.stable}'s log files but its policy does not let CloudTrail use "
                f"it ({', '.join(missing)}); CreateTrail fails with InsufficientEncryptionPolicyException "
                f"({TRAIL_KEY_DOC})"
            )


def _delegated_use(stack: Stack, key: Address, statements: list[Mapping[str, Any]]) -> Iterator[str]:
    delegated = [user for rtype in DELEGATED_USERS for user in _key_users(stack, key, rtype)]
    if not delegated:
        return
    root = [s for s in statements if any(p.endswith(":root") for p in _principals(s, "AWS"))]
    missing = _covers(root, DELEGATED_NEEDS)
    if missing:
        yield (
            f"{key.stable}: used on a role's behalf by {delegated[0].stable} (and {len(delegated) - 1} more) "
            f"but its policy does not delegate {', '.join(missing)} to the account's IAM policies; those "
            f"calls fail with AccessDenied whatever the role may do ({DELEGATION_DOC})"
        )


def key_policy_admits_the_services_that_use_it(stack: Stack) -> Iterator[str]:
    """CloudWatch Logs (scoped by its encryption context), the services publishing to encrypted
    topics (and the topic policy letting them), CloudTrail, and IAM delegation for the services
    that use the key on a role's behalf. Auto Scaling has its own rule above."""
    for key in stack.of_type("aws_kms_key"):
        statements = _key_policy(stack, key)
        for check in (_logs_use, _publishers_use, _trail_use, _delegated_use):
            yield from check(stack, key, statements)


def replication_can_use_both_keys(stack: Stack) -> Iterator[str]:
    """Replication of SSE-KMS objects: asked for in the rule, a replica key in the destination's
    region, and the replication role allowed to decrypt with the source key and encrypt with the
    replica key (the key policies delegating to IAM, checked above)."""
    for config, body in stack.of_type("aws_s3_bucket_replication_configuration").items():
        role_policies = [
            s
            for policy, policy_body in stack.of_type("aws_iam_role_policy").items()
            if set(stack.targets(policy_body.get("role", ""), "aws_iam_role"))
            & set(stack.targets(body.get("role", ""), "aws_iam_role"))
            for s in stack.policy_statements(policy_body.get("policy"))
        ]
        sources = stack.targets(body.get("bucket", ""), "aws_s3_bucket")
        source_keys = [
            key
            for enc, enc_body in stack.of_type("aws_s3_bucket_server_side_encryption_configuration").items()
            if set(stack.targets(enc_body.get("bucket", ""), "aws_s3_bucket")) & set(sources)
            for key in stack.targets(enc_body, "aws_kms_key")
        ]
        for rule in body.get("rule", []):
            destination = rule.get("destination", {})
            replica_keys = stack.targets(destination.get("encryption_configuration", {}), "aws_kms_key")
            buckets = stack.targets(destination.get("bucket", ""), "aws_s3_bucket")
            wanted = str(rule.get("source_selection_criteria", {}).get("sse_kms_encrypted_objects", {}).get("status"))
            if source_keys and wanted != "Enabled":
                yield (
                    f"{config.stable}: rule {rule.get('id')} does not ask for SSE-KMS objects "
                    f"(source_selection_criteria.sse_kms_encrypted_objects), so S3 replicates none of the "
                    f"source bucket's objects ({REPLICATION_KMS_DOC})"
                )
            if source_keys and not replica_keys:
                yield (
                    f"{config.stable}: rule {rule.get('id')} has no replica_kms_key_id for SSE-KMS objects "
                    f"({REPLICATION_KMS_DOC})"
                )
            for key in replica_keys:
                for bucket in buckets:
                    if stack.provider_alias(key) != stack.provider_alias(bucket):
                        yield (
                            f"{config.stable}: replica key {key.stable} is not in {bucket.stable}'s region; S3 "
                            f"needs a key of the destination region ({REPLICATION_KMS_DOC})"
                        )
            for key, action in [(k, "kms:Decrypt") for k in source_keys] + [(k, "kms:Encrypt") for k in replica_keys]:
                mine = [s for s in role_policies if key in stack.targets(s.get("Resource", ""), "aws_kms_key")]
                if _covers(mine, (action,)):
                    yield (
                        f"{config.stable}: the replication role may not {action} with {key.stable}; those objects "
                        f"fail to replicate ({REPLICATION_KMS_DOC})"
                    )


# -- log delivery buckets ---------------------------------------------------------------------------

ACCESS_LOG_DOC = "https://docs.aws.amazon.com/AmazonS3/latest/userguide/enable-server-access-logging.html"
NLB_LOG_DOC = "https://docs.aws.amazon.com/elasticloadbalancing/latest/network/enable-access-logs.html"


def _bucket_policy(stack: Stack, bucket: Address) -> list[Mapping[str, Any]]:
    return [
        s
        for policy, body in stack.of_type("aws_s3_bucket_policy").items()
        if bucket in stack.targets(body.get("bucket", ""), "aws_s3_bucket")
        for s in stack.policy_statements(body.get("policy"))
    ]


def _bucket_algorithms(stack: Stack, bucket: Address) -> set[str]:
    return {
        str(rule.get("apply_server_side_encryption_by_default", {}).get("sse_algorithm"))
        for enc, body in stack.of_type("aws_s3_bucket_server_side_encryption_configuration").items()
        if bucket in stack.targets(body.get("bucket", ""), "aws_s3_bucket")
        for rule in body.get("rule", [])
    }


def _writes(statements: list[Mapping[str, Any]], service: str, action: str, key: str) -> bool:
    """Some Allow statement lets ``service`` do ``action`` on the object (or bucket) ``key``."""
    return any(
        not _covers([s], (action,)) and any(fnmatch.fnmatchcase(key, r) for r in listed(s.get("Resource")))
        for s in _for_service(statements, service)
    )


def _access_log_targets(stack: Stack) -> Iterator[str]:
    for logging, body in stack.of_type("aws_s3_bucket_logging").items():
        sources = stack.targets(body.get("bucket", ""), "aws_s3_bucket")
        for target in stack.targets(body.get("target_bucket", ""), "aws_s3_bucket"):
            key = f"${{{target}.arn}}/{body.get('target_prefix', '')}2026-12-03-00-00-00-0123456789ABCDEF"
            statements = _bucket_policy(stack, target)
            mine = [
                s
                for s in _for_service(statements, "logging.s3.amazonaws.com")
                if _writes([s], "logging.s3.amazonaws.com", "s3:PutObject", key)
            ]
            if not mine:
                yield (
                    f"{logging.stable}: {target.stable}'s policy does not let logging.s3.amazonaws.com put "
                    f"objects under {body.get('target_prefix', '')!r}; S3 delivers no access logs ({ACCESS_LOG_DOC})"
                )
            for s in mine:
                named = [
                    v for block in s.get("Condition", {}).values() for k, v in block.items() if k == "aws:SourceArn"
                ]
                if named and not any(set(stack.targets(v, "aws_s3_bucket")) & set(sources) for v in named):
                    yield (
                        f"{logging.stable}: {target.stable}'s policy admits access logs from another bucket than "
                        f"{sources[0].stable} (aws:SourceArn) ({ACCESS_LOG_DOC})"
                    )
            if _bucket_algorithms(stack, target) - {"AES256"}:
                yield (
                    f"{logging.stable}: {target.stable} encrypts by default with a KMS key; S3 server access logs "
                    f"can only be delivered to a bucket with SSE-S3 (AES256) ({ACCESS_LOG_DOC})"
                )
            if any(stack.provider_alias(s) != stack.provider_alias(target) for s in sources):
                yield f"{logging.stable}: {target.stable} is in another region than its source ({ACCESS_LOG_DOC})"


def _trail_buckets(stack: Stack) -> Iterator[str]:
    for trail, body in stack.of_type("aws_cloudtrail").items():
        for bucket in stack.targets(body.get("s3_bucket_name", ""), "aws_s3_bucket"):
            statements = _bucket_policy(stack, bucket)
            prefix = f"{body['s3_key_prefix']}/" if body.get("s3_key_prefix") else ""
            key = f"${{{bucket}.arn}}/{prefix}AWSLogs/"
            acl = _writes(statements, "cloudtrail.amazonaws.com", "s3:GetBucketAcl", f"${{{bucket}.arn}}")
            write = any(
                fnmatch.fnmatchcase(key + "x", r.split("${data.aws_caller_identity")[0] + "*")
                and not _covers([s], ("s3:PutObject",))
                for s in _for_service(statements, "cloudtrail.amazonaws.com")
                for r in listed(s.get("Resource"))
            )
            if not (acl and write):
                yield (
                    f"{trail.stable}: {bucket.stable}'s policy does not let cloudtrail.amazonaws.com "
                    f"{'check the bucket ACL' if not acl else 'write ' + key[key.index('/') + 1 :] + '<account>/'}; "
                    f"CreateTrail fails with InsufficientS3BucketPolicyException ({TRAIL_DOC})"
                )


def _load_balancer_log_buckets(stack: Stack) -> Iterator[str]:
    for lb, body in stack.of_type("aws_lb").items():
        logs = body.get("access_logs", {})
        if not (isinstance(logs, Mapping) and str(logs.get("enabled")).lower() == "true"):
            continue
        for bucket in stack.targets(logs.get("bucket", ""), "aws_s3_bucket"):
            prefix = f"{logs['prefix']}/" if logs.get("prefix") else ""
            if not _writes(
                _bucket_policy(stack, bucket),
                "delivery.logs.amazonaws.com",
                "s3:PutObject",
                f"${{{bucket}.arn}}/{prefix}AWSLogs/x",
            ):
                yield (
                    f"{lb.stable}: {bucket.stable}'s policy does not let delivery.logs.amazonaws.com write its "
                    f"access logs; enabling them fails with Access Denied ({NLB_LOG_DOC})"
                )
            if body.get("load_balancer_type") != "network" and _bucket_algorithms(stack, bucket) - {"AES256"}:
                yield f"{lb.stable}: {bucket.stable} must use SSE-S3 for Application Load Balancer logs ({NLB_LOG_DOC})"


def log_buckets_admit_their_delivery_service(stack: Stack) -> Iterator[str]:
    """S3 server access logging, CloudTrail and load balancer access logs: the bucket policy lets
    the delivering service write where it writes, and the bucket's encryption is one it can use."""
    for check in (_access_log_targets, _trail_buckets, _load_balancer_log_buckets):
        yield from check(stack)


# -- names ------------------------------------------------------------------------------------------

NAMES_DOC = "https://docs.aws.amazon.com/general/latest/gr/aws-service-information.html"
# (resource type, attribute) -> (most characters, allowed form, the service's words for it).
_ALNUM_HYPHEN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_RDS_ID = r"[a-z](?!.*--)(?:[a-z0-9-]*[a-z0-9])?"
NAME_RULES: dict[tuple[str, str], tuple[int, str, str]] = {
    ("aws_s3_bucket", "bucket"): (63, r"(?!xn--|sthree-|amzn-s3-demo-)[a-z0-9][a-z0-9.-]*[a-z0-9]", "S3 bucket"),
    # The provider appends 26 characters to a prefix: 37 + 26 = 63.
    ("aws_s3_bucket", "bucket_prefix"): (37, r"(?!xn--|sthree-|amzn-s3-demo-)[a-z0-9][a-z0-9.-]*", "S3 bucket prefix"),
    ("aws_iam_role", "name"): (64, r"[\w+=,.@-]+", "IAM role"),
    ("aws_iam_role", "name_prefix"): (38, r"[\w+=,.@-]+", "IAM role prefix"),
    ("aws_iam_instance_profile", "name"): (128, r"[\w+=,.@-]+", "instance profile"),
    ("aws_iam_role_policy", "name"): (128, r"[\w+=,.@-]+", "inline policy"),
    ("aws_lb", "name"): (32, rf"(?!internal-){_ALNUM_HYPHEN}", "load balancer"),
    ("aws_lb_target_group", "name"): (32, _ALNUM_HYPHEN, "target group"),
    ("aws_db_instance", "identifier"): (63, _RDS_ID, "RDS DB instance identifier"),
    ("aws_db_parameter_group", "name"): (255, _RDS_ID, "RDS parameter group"),
    ("aws_db_subnet_group", "name"): (255, r"[a-z0-9 ._-]+", "RDS subnet group"),
    ("aws_cloudwatch_log_group", "name"): (512, r"[A-Za-z0-9._/#-]+", "log group"),
    ("aws_cloudwatch_log_metric_filter", "name"): (512, r"[^:*]+", "metric filter"),
    ("aws_cloudwatch_metric_alarm", "alarm_name"): (255, r"[^\x00-\x1f]+", "alarm"),
    ("aws_cloudwatch_dashboard", "dashboard_name"): (255, r"[A-Za-z0-9_-]+", "dashboard"),
    ("aws_backup_vault", "name"): (50, r"[A-Za-z0-9_-]{2,}", "backup vault"),
    ("aws_backup_plan", "name"): (50, r"[A-Za-z0-9_.-]+", "backup plan"),
    ("aws_backup_selection", "name"): (50, r"[A-Za-z0-9_.-]+", "backup selection"),
    ("aws_cloudtrail", "name"): (128, r"[A-Za-z0-9](?!.*[._-]{2})[A-Za-z0-9._-]{2,}", "trail"),
    ("aws_sns_topic", "name"): (256, r"[A-Za-z0-9_-]+", "SNS topic"),
    ("aws_kms_alias", "name"): (256, r"alias/(?!aws/)[A-Za-z0-9/_-]+", "KMS alias"),
    ("aws_secretsmanager_secret", "name"): (512, r"[A-Za-z0-9/_+=.@-]+", "secret"),
    ("aws_ssm_document", "name"): (128, r"(?!aws-|amazon|AWS-|Amazon)[A-Za-z0-9_.-]{3,}", "SSM document"),
    ("aws_launch_template", "name"): (128, r"[A-Za-z0-9().\-/_]{3,}", "launch template"),
    ("aws_autoscaling_group", "name"): (255, r".+", "Auto Scaling group"),
    ("aws_security_group", "name"): (255, r"(?!sg-)[A-Za-z0-9 ._\-:/()#,@\[\]+=&;{}!$*]+", "security group"),
    # The role is AWSServiceRoleForAutoScaling_<suffix>, at most 64 characters.
    ("aws_iam_service_linked_role", "custom_suffix"): (64 - 29, r"[\w+=,.@-]+", "service-linked role suffix"),
}
_RANDOM_HEX = re.compile(r"\$\{random_id\.([A-Za-z0-9_-]+)\.hex\}")


def _as_applied(stack: Stack, value: str) -> str | None:
    """``value`` with each random suffix at its full width; None if anything else is filled in at apply."""

    def width(m: re.Match[str]) -> str:
        body = stack.data.get("resource", {}).get("random_id", {}).get(m[1], {})
        return "f" * (2 * int(body.get("byte_length", NAME_SUFFIX_BYTES)))

    text = _RANDOM_HEX.sub(width, value)
    return None if "${" in text else text


def names_within_aws_limits(stack: Stack) -> Iterator[str]:
    for (rtype, attr), (most, form, what) in NAME_RULES.items():
        for address, body in stack.of_type(rtype).items():
            value = body.get(attr)
            if not isinstance(value, str):
                continue
            name = _as_applied(stack, value)
            if name is None:
                continue
            if len(name) > most:
                yield (
                    f"{address.stable}: {what} name {name!r} has {len(name)} characters at apply (random suffix "
                    f"included); AWS allows {most} ({NAMES_DOC})"
                )
            elif not re.fullmatch(form, name):
                yield f"{address.stable}: {what} name {name!r} is not of the form AWS accepts ({form}) ({NAMES_DOC})"


# -- database class, recovery, alarms ---------------------------------------------------------------

RDS_CLASS_DOC = "https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/Concepts.DBInstanceClass.Support.html"
RECOVER_DOC = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-instance-recover.html"
METRICS_DOC = "https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/aws-services-cloudwatch-metrics.html"


def db_class_is_asked_of_rds(stack: Stack) -> Iterator[str]:
    """The DB instance's engine and class are those the plan asks RDS about (the orderable lookup
    that picks the zones): a class RDS does not offer for the engine fails the plan, not the apply."""
    lookups = [body for address, body in stack.data_sources.items() if address.type == "aws_rds_orderable_db_instance"]
    for db, body in stack.of_type("aws_db_instance").items():
        asked = any(
            lookup.get("engine") == body.get("engine") and lookup.get("instance_class") == body.get("instance_class")
            for lookup in lookups
        )
        if not asked:
            yield (
                f"{db.stable}: class {body.get('instance_class')} for {body.get('engine')} is not asked of RDS at "
                f"plan (data.aws_rds_orderable_db_instance); a class RDS does not offer fails only at apply "
                f"({RDS_CLASS_DOC})"
            )


def ec2_recovery_only_where_supported(stack: Stack) -> Iterator[str]:
    for alarm, body in stack.of_type("aws_cloudwatch_metric_alarm").items():
        if not any(str(a).endswith(":ec2:recover") for a in body.get("alarm_actions", [])):
            continue
        for instance in stack.targets(body.get("dimensions", {}), "aws_instance"):
            instance_body = stack.body(instance)
            templates = stack.targets(instance_body.get("launch_template", {}), "aws_launch_template")
            instance_type = str(
                instance_body.get("instance_type") or next((stack.body(t).get("instance_type") for t in templates), "")
            )
            if not ec2_can_recover(instance_type):
                yield (
                    f"{alarm.stable}: the recover action on {instance.stable}, a {instance_type}; EC2 recovers only "
                    f"the listed families, EBS-only and not metal, so the alarm would never act ({RECOVER_DOC})"
                )


# namespace -> metric -> the dimension sets CloudWatch publishes it with (the ones this project uses
# and their neighbours; a metric missing here is reported, so add it with AWS's page open).
AWS_METRICS: dict[str, dict[str, tuple[frozenset[str], ...]]] = {
    "AWS/EC2": {
        m: (frozenset({"InstanceId"}), frozenset({"AutoScalingGroupName"}))
        for m in (
            "StatusCheckFailed StatusCheckFailed_System StatusCheckFailed_Instance StatusCheckFailed_AttachedEBS "
            "CPUUtilization CPUCreditBalance NetworkIn NetworkOut EBSIOBalance% MetadataNoToken"
        ).split()
    },
    "AWS/RDS": {
        m: (frozenset({"DBInstanceIdentifier"}),)
        for m in (
            "CPUUtilization FreeStorageSpace DatabaseConnections FreeableMemory ReadLatency WriteLatency ReadIOPS "
            "WriteIOPS DiskQueueDepth SwapUsage BurstBalance CPUCreditBalance TransactionLogsDiskUsage "
            "MaximumUsedTransactionIDs OldestReplicationSlotLag ReplicaLag"
        ).split()
    },
    "AWS/NetworkELB": {
        **{
            m: (
                frozenset({"LoadBalancer", "TargetGroup"}),
                frozenset({"LoadBalancer", "TargetGroup", "AvailabilityZone"}),
            )
            for m in ("UnHealthyHostCount", "HealthyHostCount")
        },
        **{
            m: (frozenset({"LoadBalancer"}), frozenset({"LoadBalancer", "AvailabilityZone"}))
            for m in "ActiveFlowCount NewFlowCount ProcessedBytes TCP_Client_Reset_Count TCP_Target_Reset_Count".split()
        },
    },
    "AWS/S3": {
        m: (frozenset({"SourceBucket", "DestinationBucket", "RuleId"}),)
        for m in (
            "OperationsFailedReplication ReplicationLatency BytesPendingReplication OperationsPendingReplication"
        ).split()
    },
    "AWS/AutoScaling": {
        m: (frozenset({"AutoScalingGroupName"}),)
        for m in "GroupInServiceInstances GroupDesiredCapacity GroupPendingInstances GroupTerminatingInstances".split()
    },
}


def alarm_metrics_exist(stack: Stack) -> Iterator[str]:
    """An alarm on a metric nobody publishes stays in INSUFFICIENT_DATA forever (AWS accepts it)."""
    published: dict[tuple[str, str], set[frozenset[str]]] = {
        (HOST_METRICS_NAMESPACE, metric): {frozenset(dims)} for metric, dims in HOST_AGENT_METRICS.items()
    }
    for _, body in stack.of_type("aws_cloudwatch_log_metric_filter").items():
        for t in _listed_blocks(body.get("metric_transformation")):
            published.setdefault((str(t.get("namespace")), str(t.get("name"))), set()).add(
                frozenset(t.get("dimensions") or {})
            )
    for alarm, body in stack.of_type("aws_cloudwatch_metric_alarm").items():
        if "metric_query" in body:
            continue
        namespace, metric = str(body.get("namespace")), str(body.get("metric_name"))
        dims = frozenset(body.get("dimensions") or {})
        if namespace.startswith("AWS/"):
            known = AWS_METRICS.get(namespace, {}).get(metric)
            if known is None:
                yield f"{alarm.stable}: {namespace} publishes no metric {metric} ({METRICS_DOC})"
            elif dims not in known:
                sets = " or ".join(sorted("+".join(sorted(k)) for k in known))
                yield (
                    f"{alarm.stable}: {namespace} {metric} is published with dimensions {sets}, not "
                    f"{'+'.join(sorted(dims)) or 'none'} ({METRICS_DOC})"
                )
        elif dims not in published.get((namespace, metric), set()):
            yield (
                f"{alarm.stable}: nothing in this stack publishes {namespace} {metric} with dimensions "
                f"{'+'.join(sorted(dims)) or 'none'} (a metric filter or the host's agent); the alarm never fires "
                f"({METRICS_DOC})"
            )


def _listed_blocks(value: Any) -> list[Mapping[str, Any]]:
    return [value] if isinstance(value, Mapping) else list(value or [])


RULES: dict[str, Callable[[Stack], Iterator[str]]] = {
    "autoscaling_role_can_use_the_volume_key": autoscaling_role_can_use_the_volume_key,
    "trail_comes_after_its_delivery_policies": trail_comes_after_its_delivery_policies,
    "backup_job_after_the_database_window": backup_job_after_the_database_window,
    "user_data_within_16_kb": user_data_within_16_kb,
    "parameter_group_family_matches_the_engine": parameter_group_family_matches_the_engine,
    "key_policy_admits_the_services_that_use_it": key_policy_admits_the_services_that_use_it,
    "replication_can_use_both_keys": replication_can_use_both_keys,
    "log_buckets_admit_their_delivery_service": log_buckets_admit_their_delivery_service,
    "names_within_aws_limits": names_within_aws_limits,
    "db_class_is_asked_of_rds": db_class_is_asked_of_rds,
    "ec2_recovery_only_where_supported": ec2_recovery_only_where_supported,
    "alarm_metrics_exist": alarm_metrics_exist,
}


def problems(data: Mapping[str, Any]) -> list[str]:
    """Every rule on one synthesized stack's JSON; each line names the rule."""
    stack = Stack.from_json(data)
    return [f"{name}: {line}" for name, rule in RULES.items() for line in rule(stack)]
