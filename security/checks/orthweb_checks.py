"""Orthweb's own checkov policies, for what checkov's built-in checks cannot see.

Loaded with ``--external-checks-dir security/checks``. Each check has a test that a deliberately
broken stack fails it (tests/test_security.py).
"""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path
from typing import Any

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.data.base_check import BaseDataCheck
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck

# checkov loads this file from its own virtualenv, outside the project: read the site's facts by path.
_FACTS = runpy.run_path(str(Path(__file__).resolve().parents[2] / "config" / "facts.py"))
POSTGRES_PORT: int = _FACTS["POSTGRES_PORT"]
SSH_PORT: int = _FACTS["SSH_PORT"]
# S3 server access logs can only be written to an SSE-S3 bucket (AWS constraint): the site's, and the
# replica region's (logs go to a bucket in the same region).
SSE_S3_ALLOWED_BUCKETS = ("aws_s3_bucket.log_bucket.", "aws_s3_bucket.replica_log_bucket.")


def first(conf: dict[str, Any], key: str, default: Any = None) -> Any:
    """checkov wraps every attribute value in a list."""
    value = conf.get(key, [default])
    return value[0] if isinstance(value, list) and value else value


def _statements(policy_text: Any) -> list[dict[str, Any]]:
    if not isinstance(policy_text, str):
        return []
    try:
        doc = json.loads(policy_text)
    except ValueError:
        return []
    statements = doc.get("Statement", [])
    return statements if isinstance(statements, list) else [statements]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _wildcard(action: str) -> bool:
    return action == "*" or action.endswith(":*") and action.split(":")[0] in ("s3", "kms", "iam", "secretsmanager")


def _port_in(conf: dict[str, Any], port: int) -> bool:
    proto = str(first(conf, "ip_protocol", first(conf, "protocol", "tcp")))
    low, high = first(conf, "from_port", 0), first(conf, "to_port", 65535)
    try:
        return proto in ("-1", "all") or int(low) <= port <= int(high)
    except (TypeError, ValueError):
        return True


class S3PolicyDeniesInsecureTransport(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="S3 bucket policy denies every request not made over TLS",
            id="CKV_ORTHWEB_1",
            categories=[CheckCategories.ENCRYPTION],
            supported_resources=["aws_s3_bucket_policy"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        policy = first(conf, "policy")
        if not isinstance(policy, str) or not policy.lstrip().startswith("{"):
            return CheckResult.UNKNOWN  # a reference, known only after apply (the plan of a new bucket)
        for s in _statements(first(conf, "policy")):
            condition = s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")
            resources = _as_list(s.get("Resource"))
            if (
                s.get("Effect") == "Deny"
                and _as_list(condition) == ["false"]
                and "s3:*" in _as_list(s.get("Action"))
                and any(r.endswith("/*") for r in resources)
                and any(not r.endswith("/*") for r in resources)
            ):
                return CheckResult.PASSED
        return CheckResult.FAILED


INGRESS_RESOURCES = ["aws_vpc_security_group_ingress_rule", "aws_security_group_rule", "aws_security_group"]
CIDR_KEYS = ("cidr_ipv4", "cidr_ipv6", "cidr_blocks", "ipv6_cidr_blocks", "prefix_list_id")


def ingress_rules(conf: dict[str, Any]) -> list[dict[str, Any]]:
    """The ingress rules a resource opens: inline blocks of a security group, or the rule itself."""
    inline = [r for r in _as_list(conf.get("ingress")) if isinstance(r, dict)]
    if inline:
        return inline
    is_rule = ("from_port" in conf or "ip_protocol" in conf) and str(first(conf, "type", "ingress")) == "ingress"
    return [conf] if is_rule else []


class PostgresIngressOnlyFromSecurityGroups(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="PostgreSQL ingress only from security groups, never from CIDR ranges",
            id="CKV_ORTHWEB_2",
            categories=[CheckCategories.NETWORKING],
            supported_resources=INGRESS_RESOURCES,
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        for rule in ingress_rules(conf):
            if _port_in(rule, POSTGRES_PORT) and any(first(rule, k) for k in CIDR_KEYS):
                return CheckResult.FAILED
        return CheckResult.PASSED


class NoSshIngress(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name=f"No security group ingress on port {SSH_PORT} (use SSM Session Manager)",
            id="CKV_ORTHWEB_3",
            categories=[CheckCategories.NETWORKING],
            supported_resources=INGRESS_RESOURCES,
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        return CheckResult.FAILED if any(_port_in(r, SSH_PORT) for r in ingress_rules(conf)) else CheckResult.PASSED


class NoWildcardActionInPolicyDocument(BaseDataCheck):
    def __init__(self) -> None:
        super().__init__(
            name="No IAM statement allows '*' or a service-wide wildcard (s3:*, kms:*, iam:*)",
            id="CKV_ORTHWEB_4",
            categories=[CheckCategories.IAM],
            supported_data=["aws_iam_policy_document"],
        )

    def scan_data_conf(self, conf: dict[str, Any]) -> CheckResult:
        for s in _as_list(conf.get("statement")):
            if isinstance(s, dict) and first(s, "effect", "Allow") == "Allow":
                if any(_wildcard(a) for a in _as_list(first(s, "actions")) or _as_list(s.get("actions"))):
                    return CheckResult.FAILED
        return CheckResult.PASSED


class NoWildcardActionInResourcePolicy(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="No Allow statement with '*' or a service-wide wildcard in key, bucket or role policies",
            id="CKV_ORTHWEB_5",
            categories=[CheckCategories.IAM],
            supported_resources=["aws_kms_key", "aws_s3_bucket_policy", "aws_iam_role_policy", "aws_iam_policy"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        for s in _statements(first(conf, "policy")):
            if s.get("Effect") == "Allow" and any(_wildcard(a) for a in _as_list(s.get("Action"))):
                return CheckResult.FAILED
        return CheckResult.PASSED


class PostgresForcesTlsWithoutStatementLogging(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="PostgreSQL parameter group forces TLS and logs no statement text (no PHI in logs)",
            id="CKV_ORTHWEB_6",
            categories=[CheckCategories.ENCRYPTION],
            supported_resources=["aws_db_parameter_group"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        if not str(first(conf, "family", "")).startswith("postgres"):
            return CheckResult.UNKNOWN
        params = {
            first(p, "name"): str(first(p, "value")) for p in _as_list(conf.get("parameter")) if isinstance(p, dict)
        }
        ok = (
            params.get("rds.force_ssl") == "1"
            and params.get("log_statement") == "none"
            and params.get("log_min_duration_statement") == "-1"
        )
        return CheckResult.PASSED if ok else CheckResult.FAILED


class DatabaseUsesItsParameterGroup(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="RDS instance uses a custom parameter group (the default one does not force TLS)",
            id="CKV_ORTHWEB_7",
            categories=[CheckCategories.ENCRYPTION],
            supported_resources=["aws_db_instance"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        group = str(first(conf, "parameter_group_name", "") or "")
        return CheckResult.PASSED if group and not group.startswith("default.") else CheckResult.FAILED


class ImdsV2Required(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Launch template and instance require IMDSv2 tokens",
            id="CKV_ORTHWEB_8",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=["aws_launch_template", "aws_instance"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        options = first(conf, "metadata_options", {}) or {}
        return CheckResult.PASSED if first(options, "http_tokens") == "required" else CheckResult.FAILED


_KEY_ATTRIBUTE = {
    "aws_db_instance": "kms_key_id",
    "aws_cloudwatch_log_group": "kms_key_id",
    "aws_secretsmanager_secret": "kms_key_id",
}


def _is_key_reference(value: Any) -> bool:
    return isinstance(value, str) and bool(re.search(r"aws_kms_key\.|^arn:aws[a-z-]*:kms:", value))


class CustomerKeyEverywhere(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="EBS, RDS, S3, CloudWatch Logs and Secrets Manager use the customer KMS key",
            id="CKV_ORTHWEB_9",
            categories=[CheckCategories.ENCRYPTION],
            supported_resources=[
                *_KEY_ATTRIBUTE,
                "aws_launch_template",
                "aws_s3_bucket_server_side_encryption_configuration",
            ],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        rtype = self.entity_type
        if rtype in _KEY_ATTRIBUTE:
            return CheckResult.PASSED if _is_key_reference(first(conf, _KEY_ATTRIBUTE[rtype])) else CheckResult.FAILED
        if rtype == "aws_launch_template":
            for mapping in _as_list(conf.get("block_device_mappings")):
                ebs = first(mapping, "ebs", {}) or {}
                if str(first(ebs, "encrypted")).lower() != "true" or not _is_key_reference(first(ebs, "kms_key_id")):
                    return CheckResult.FAILED
            return CheckResult.PASSED
        rule = first(conf, "rule", {}) or {}
        default = first(rule, "apply_server_side_encryption_by_default", {}) or {}
        if first(default, "sse_algorithm") == "aws:kms" and _is_key_reference(first(default, "kms_master_key_id")):
            return CheckResult.PASSED
        bucket = str(first(conf, "bucket", ""))
        allowed = any(b in bucket for b in SSE_S3_ALLOWED_BUCKETS) and first(default, "sse_algorithm") == "AES256"
        return CheckResult.PASSED if allowed else CheckResult.FAILED


class NoBroadManagedPolicy(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="No AWS managed policy that grants every SSM parameter (AmazonSSMManagedInstanceCore)",
            id="CKV_ORTHWEB_10",
            categories=[CheckCategories.IAM],
            supported_resources=["aws_iam_role_policy_attachment", "aws_iam_policy_attachment"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        arn = str(first(conf, "policy_arn", ""))
        return CheckResult.FAILED if arn.endswith(BROAD_MANAGED_POLICIES) else CheckResult.PASSED


# Managed policies broader than their purpose: ssm:GetParameter(s) on every parameter, Run Command.
BROAD_MANAGED_POLICIES = ("/AmazonSSMManagedInstanceCore", "/AmazonEC2RoleforSSM", "/AmazonSSMFullAccess")
SITE_KEY_REFERENCE = "aws_kms_key.site_key"


def _values(block: dict[str, Any], key: str) -> list[Any]:
    """A block attribute as a flat list: checkov wraps each value in a list, sometimes twice."""
    value = block.get(key)
    while isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        value = value[0]
    return _as_list(value)


def _conditions(statement: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in _values(statement, "condition") if isinstance(c, dict)]


def _variables(statement: dict[str, Any]) -> set[str]:
    return {str(first(c, "variable")) for c in _conditions(statement)}


class SiteKeyOnlyThroughServices(BaseDataCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Identity policies use KMS keys only through AWS services (kms:ViaService); never kms:Encrypt on the"
            " site key",
            id="CKV_ORTHWEB_11",
            categories=[CheckCategories.IAM],
            supported_data=["aws_iam_policy_document"],
        )

    def scan_data_conf(self, conf: dict[str, Any]) -> CheckResult:
        for s in _as_list(conf.get("statement")):
            if not isinstance(s, dict) or first(s, "effect", "Allow") != "Allow":
                continue
            actions = [str(a) for a in _values(s, "actions")]
            kms = [a for a in actions if a.startswith("kms:")]
            on_site_key = any(SITE_KEY_REFERENCE in str(r) for r in _values(s, "resources"))
            via_service = "kms:ViaService" in _variables(s)
            # kms:Encrypt only as S3 replication needs it on the replica key: through a service.
            if "kms:Encrypt" in kms and (on_site_key or not via_service):
                return CheckResult.FAILED
            if kms and on_site_key and not via_service:
                return CheckResult.FAILED
        return CheckResult.PASSED


# Services that assume a role handed to them (iam:PassRole) and send no source account: EC2 (the
# instance profile) and AWS Backup. Every other service trust names the account or the source.
TRUSTS_WITHOUT_SOURCE = ("ec2.amazonaws.com", "backup.amazonaws.com")


class ServiceTrustNamesTheSource(BaseDataCheck):
    def __init__(self) -> None:
        super().__init__(
            name="A role an AWS service assumes is limited to this account or source (confused deputy)",
            id="CKV_ORTHWEB_12",
            categories=[CheckCategories.IAM],
            supported_data=["aws_iam_policy_document"],
        )

    def scan_data_conf(self, conf: dict[str, Any]) -> CheckResult:
        for s in _as_list(conf.get("statement")):
            if not isinstance(s, dict) or "sts:AssumeRole" not in [str(a) for a in _values(s, "actions")]:
                continue
            services = [
                str(i)
                for p in _values(s, "principals")
                if isinstance(p, dict) and first(p, "type") == "Service"
                for i in _values(p, "identifiers")
            ]
            if any(svc not in TRUSTS_WITHOUT_SOURCE for svc in services):
                if not _variables(s) & {"aws:SourceAccount", "aws:SourceArn"}:
                    return CheckResult.FAILED
        return CheckResult.PASSED


class BucketRefusesForeignEncryption(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="KMS-encrypted buckets refuse writes under another key, SSE-S3 or a client key (SSE-C)",
            id="CKV_ORTHWEB_13",
            categories=[CheckCategories.ENCRYPTION],
            supported_resources=["aws_s3_bucket_policy"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        policy = first(conf, "policy")
        if not isinstance(policy, str) or not policy.lstrip().startswith("{"):
            return CheckResult.UNKNOWN
        if any(b in str(first(conf, "bucket", "")) for b in SSE_S3_ALLOWED_BUCKETS):
            return CheckResult.PASSED  # the access-log bucket is SSE-S3 by AWS constraint
        denies = [st for st in _statements(policy) if st.get("Effect") == "Deny"]
        conditions = [st.get("Condition", {}) for st in denies]
        sse_c = any(
            c.get("Null", {}).get("s3:x-amz-server-side-encryption-customer-algorithm") == "false" for c in conditions
        )
        other_keys = any(
            "s3:x-amz-server-side-encryption-aws-kms-key-id" in c.get("StringNotEqualsIfExists", {}) for c in conditions
        )
        other_sse = any(
            c.get("StringNotEqualsIfExists", {}).get("s3:x-amz-server-side-encryption") == "aws:kms" for c in conditions
        )
        return CheckResult.PASSED if sse_c and other_keys and other_sse else CheckResult.FAILED


class SessionsLoggedEncrypted(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Session Manager sessions are logged to an encrypted CloudWatch log group",
            id="CKV_ORTHWEB_14",
            categories=[CheckCategories.LOGGING],
            supported_resources=["aws_ssm_document"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        if first(conf, "document_type") != "Session":
            return CheckResult.UNKNOWN
        content = first(conf, "content")
        if not isinstance(content, str) or not content.lstrip().startswith("{"):
            return CheckResult.UNKNOWN  # known only after apply (a plan of a new document)
        try:
            inputs = json.loads(content).get("inputs", {})
        except ValueError:
            return CheckResult.FAILED
        ok = bool(inputs.get("cloudWatchLogGroupName")) and inputs.get("cloudWatchEncryptionEnabled") is True
        return CheckResult.PASSED if ok else CheckResult.FAILED


for check in (
    NoBroadManagedPolicy,
    SiteKeyOnlyThroughServices,
    ServiceTrustNamesTheSource,
    BucketRefusesForeignEncryption,
    SessionsLoggedEncrypted,
    S3PolicyDeniesInsecureTransport,
    PostgresIngressOnlyFromSecurityGroups,
    NoSshIngress,
    NoWildcardActionInPolicyDocument,
    NoWildcardActionInResourcePolicy,
    PostgresForcesTlsWithoutStatementLogging,
    DatabaseUsesItsParameterGroup,
    ImdsV2Required,
    CustomerKeyEverywhere,
):
    check()
