"""The AWS API emulator's server (moto), with its IAM checks made closer to AWS's. A stand-in for AWS.

moto's server can check each request against the caller's IAM identity policies (switched on with
``POST /moto-api/reset-auth``; off by default, as the tests need). As shipped (moto 5.2) that check
differs from AWS in three ways that would make a correct policy fail or a wrong one pass; this module
closes them before it starts moto's own server:

- Secrets Manager is authorized against resource ``*``, so a statement scoped to the secret's ARN
  (as AWS wants it) never matches: here the request's resource is the secret's ARN (and for EC2's
  GetManagedPrefixListEntries, the prefix list's ARN).
- IAM wildcards: ``?`` matches one character and every other character is literal; moto read the
  pattern as a regular expression with only ``*`` translated.
- A JSON-protocol service (Secrets Manager) answers a refusal as AWS does, a JSON
  ``AccessDeniedException``; moto answered the query protocol's XML ``AccessDenied``.
- A trust policy that names a role matches that role's sessions (``assumed-role/<role>/<session>``),
  and one that names the account root matches every principal of the account; moto compared the
  caller's session ARN with the role ARN as strings.

It also mends one moto bug: a versioned bucket holding a delete marker could not be emptied
(``FakeDeleteMarker`` has no ``dispose``; a delete answered 500 and Terraform's force_destroy
retried for minutes). And it answers one question moto leaves empty (a stand-in answer, named as such):
``DescribeOrderableDBInstanceOptions`` for PostgreSQL, which the stack asks to place its subnets in
zones that offer the database class. moto knows Aurora and Neptune only; here every class asked for
is orderable in every zone of the region (real RDS answers per class and zone; EC2's instance type
offerings, which moto does know per zone, are left as moto has them).

Likewise a stand-in answer for Service Quotas' Elastic IP quota (ec2 ``L-0263D0A3``), which moto
does not know: AWS's default of 5 a region (``make preflight ARGS=--account`` asks it).

Bucket policies' Deny statements are judged as AWS would: an S3 request under IAM enforcement that
a bucket's policy denies is refused whatever IAM allows (moto judged no caller), and moto's own check
of every object request no longer applies a Deny whose condition operator it does not know to every
request (so the stack's real bucket policies can be applied to the emulator). Only conditions on
keys known here are judged: ``aws:PrincipalArn`` (a role session counts as its role; known only
under enforcement) and ``aws:SecureTransport`` (STAND-IN: true; the emulator is plain HTTP on
loopback and stands for HTTPS); a statement with any other condition key is not judged.

Still not checked, with or without this module: key policies, bucket policies' Allow statements,
secret resource policies, service-linked roles, condition keys other than the request's own
parameters (docs/security.md lists which of those the stack's requirement checks cover instead).
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

ASSUMED_ROLE = re.compile(r"^arn:([^:]+):sts::(\d+):assumed-role/([^/]+)/[^/]+$")


def iam_pattern(pattern: str) -> re.Pattern[str]:
    """An IAM ARN or action pattern as a regular expression: ``*`` any run, ``?`` one character."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("^" + "".join(parts) + "$", re.DOTALL)


def principal_matches(principal: str, expected: str) -> bool:
    """Whether the caller ``principal`` is one a policy's ``expected`` principal names, as AWS reads it."""
    if expected == "*" or principal == expected:
        return True
    session = ASSUMED_ROLE.match(principal)
    if not session:
        return False
    partition, account, role = session.groups()
    if expected == f"arn:{partition}:iam::{account}:root" or expected == account:
        return True
    named = re.match(rf"^arn:{re.escape(partition)}:iam::{account}:role/(?:.*/)?([^/]+)$", expected)
    return bool(named and named.group(1) == role)


def secret_resource(response: Any) -> str:
    """The ARN of the secret a Secrets Manager request names (``*`` when there is none or it is unknown)."""
    try:
        secret_id = json.loads(response.body or "{}").get("SecretId")
    except (ValueError, AttributeError):
        return "*"
    if isinstance(secret_id, str) and secret_id in response.backend.secrets:
        return str(response.backend.secrets[secret_id].arn)
    return "*"


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


CONDITION_TESTS = {
    "ArnLike": lambda value, patterns: any(iam_pattern(p).match(value) for p in patterns),
    "StringLike": lambda value, patterns: any(iam_pattern(p).match(value) for p in patterns),
    "ArnNotLike": lambda value, patterns: not any(iam_pattern(p).match(value) for p in patterns),
    "StringNotLike": lambda value, patterns: not any(iam_pattern(p).match(value) for p in patterns),
    "StringEquals": lambda value, patterns: value in patterns,
    "StringNotEquals": lambda value, patterns: value not in patterns,
    "Bool": lambda value, patterns: value.lower() in [p.lower() for p in patterns],
}


def policy_denies(policy: dict[str, Any], action: str, resource: str, context: dict[str, str]) -> str | None:
    """The Sid of the first Deny statement of a resource policy that applies to ``action`` on
    ``resource`` for every principal, with every condition judged from ``context`` (None: none
    applies). A statement naming principals, or with a condition key ``context`` lacks, is not judged."""
    statements = policy.get("Statement")
    for statement in [statements] if isinstance(statements, dict) else list(statements or []):
        principal = statement.get("Principal")
        if statement.get("Effect") != "Deny" or principal not in ("*", {"AWS": "*"}, {"AWS": ["*"]}):
            continue
        if not any(iam_pattern(a).match(action) for a in _listed(statement.get("Action"))):
            continue
        if not any(iam_pattern(r).match(resource) for r in _listed(statement.get("Resource"))):
            continue
        conditions = [
            (test.removesuffix("IfExists"), key, _listed(values))
            for test, keyed in (statement.get("Condition") or {}).items()
            for key, values in keyed.items()
        ]
        if any(test not in CONDITION_TESTS or key not in context for test, key, _ in conditions):
            continue
        if all(CONDITION_TESTS[test](context[key], values) for test, key, values in conditions):
            return str(statement.get("Sid") or "a Deny statement")
    return None


def prefix_list_resource(response: Any) -> str:
    """The ARN of the prefix list an EC2 GetManagedPrefixListEntries names (``*`` for any other call)."""
    if response._get_action() != "GetManagedPrefixListEntries":
        return "*"
    found = response.ec2_backend.managed_prefix_lists.get(response._get_param("PrefixListId"))
    return str(found.prefix_list_arn) if found else "*"


# STAND-IN answer: the classes RDS is said to offer PostgreSQL in (when no class is asked for).
STANDIN_DB_CLASSES = tuple(
    f"db.{family}.{size}"
    for family in ("t3", "t4g", "m6g", "m6i", "m7g", "r6g", "r6i", "r7g")
    for size in ("micro", "small", "medium", "large", "xlarge", "2xlarge")
)


def orderable_postgres(engine: str, version: str, db_class: str, zones: list[str]) -> list[dict[str, Any]]:
    """The stand-in's orderable options of PostgreSQL: the class asked for (or every stand-in class)
    in every zone, with gp3 storage."""
    return [
        {
            "Engine": engine,
            "EngineVersion": version or "17.4",
            "DBInstanceClass": klass,
            "LicenseModel": "postgresql-license",
            "StorageType": "gp3",
            "AvailabilityZones": [{"Name": zone} for zone in zones],
            "MultiAZCapable": True,
            "SupportsStorageEncryption": True,
            "SupportsStorageAutoscaling": True,
            "SupportsEnhancedMonitoring": True,
            "SupportsIAMDatabaseAuthentication": True,
            "SupportsPerformanceInsights": True,
        }
        for klass in ([db_class] if db_class else STANDIN_DB_CLASSES)
    ]


EIP_QUOTA_CODE = "L-0263D0A3"
EIP_DEFAULT_QUOTA = 5.0


def judge_bucket_policies() -> None:
    """S3 requests under IAM enforcement are refused when the bucket's policy denies them (module docstring)."""
    from moto.iam.access_control import S3IAMRequest
    from moto.s3.models import s3_backends

    moto_s3_check = S3IAMRequest.check_action_permitted

    def s3_check(self: Any, resource: str) -> None:
        moto_s3_check(self, resource)  # the caller's identity policies
        bucket_name = resource.split(":::", 1)[-1].split("/", 1)[0]
        try:
            partition = resource.split(":")[1]
            bucket = s3_backends[self.account_id][partition].get_bucket(bucket_name)
        except Exception:  # noqa: BLE001 - no such bucket: S3 answers that itself
            return
        if not bucket.policy:
            return
        principal = self._access_key.arn
        session = ASSUMED_ROLE.match(principal)
        if session:
            principal = self.backend.get_role(session.group(3)).arn
        context = {"aws:PrincipalArn": principal, "aws:SecureTransport": "true"}
        if policy_denies(json.loads(bucket.policy), self._action, resource, context):
            self._raise_access_denied()

    S3IAMRequest.check_action_permitted = s3_check  # type: ignore[method-assign]

    from moto.iam.access_control import PermissionResult
    from moto.s3.models import FakeBucket

    def bucket_permission(self: Any, action: str, resource: str) -> Any:
        """moto's own check of every object request (enforcement on or off, no caller known): it applied
        a Deny whose condition operator it does not know (Bool, ArnNotLike, Null, ...IfExists) to every
        request. Here such a statement is judged only when its keys are known without a caller."""
        if self.policy and policy_denies(json.loads(self.policy), action, resource, {"aws:SecureTransport": "true"}):
            return PermissionResult.DENIED
        return PermissionResult.NEUTRAL

    FakeBucket.get_permission = bucket_permission  # type: ignore[method-assign]


def install() -> None:
    from moto.core.exceptions import AccessDeniedError, JsonRESTError
    from moto.iam.access_control import IAMPolicyStatement, IAMRequest
    from moto.secretsmanager.responses import SecretsManagerResponse

    class JsonAccessDenied(JsonRESTError):
        code = 400

    def access_denied(self: Any) -> None:
        message = f"User: {self._access_key.arn} is not authorized to perform: {self._action}"
        if "X-Amz-Target" in self._headers:
            raise JsonAccessDenied("AccessDeniedException", message)
        raise AccessDeniedError(user_arn=self._access_key.arn, action=self._action)

    def match(pattern: str, string: str) -> re.Match[str] | None:
        return iam_pattern(pattern).match(string)

    def check_principal(self: Any, principal: str) -> bool:
        expected = (self._statement.get("Principal") or {}).get("AWS")
        if expected is None:
            return not self._statement.get("Principal")
        return any(principal_matches(principal, e) for e in ([expected] if isinstance(expected, str) else expected))

    judge_bucket_policies()

    from moto.core.responses import ActionResult
    from moto.ec2.models import ec2_backends
    from moto.rds.responses import RDSResponse

    moto_orderable = RDSResponse.describe_orderable_db_instance_options

    def describe_orderable(self: Any) -> Any:
        engine = self.params.get("Engine")
        if engine != "postgres":
            return moto_orderable(self)
        zones = [z.name for z in ec2_backends[self.current_account][self.region].describe_availability_zones()]
        options = orderable_postgres(
            engine, self.params.get("EngineVersion") or "", self.params.get("DBInstanceClass") or "", zones
        )
        return ActionResult({"OrderableDBInstanceOptions": options})

    from moto.s3.models import FakeDeleteMarker
    from moto.servicequotas.models import ServiceQuotasBackend

    moto_quota = ServiceQuotasBackend.get_service_quota

    def get_service_quota(self: Any, service_code: str, quota_code: str) -> dict[str, Any]:
        if (service_code, quota_code) != ("ec2", EIP_QUOTA_CODE):
            return moto_quota(self, service_code, quota_code)
        return {
            "ServiceCode": "ec2",
            "QuotaCode": EIP_QUOTA_CODE,
            "QuotaName": "EC2-VPC Elastic IPs",
            "Value": EIP_DEFAULT_QUOTA,
            "Unit": "None",
            "Adjustable": True,
            "GlobalQuota": False,
        }

    ServiceQuotasBackend.get_service_quota = get_service_quota  # type: ignore[method-assign]

    FakeDeleteMarker.dispose = lambda self, garbage=False: None  # type: ignore[attr-defined]
    RDSResponse.describe_orderable_db_instance_options = describe_orderable  # type: ignore[method-assign]
    IAMRequest._raise_access_denied = access_denied  # type: ignore[method-assign]
    IAMPolicyStatement._match = staticmethod(match)  # type: ignore[method-assign]
    IAMPolicyStatement._check_principal = check_principal  # type: ignore[method-assign]
    SecretsManagerResponse._determine_resource = secret_resource  # type: ignore[attr-defined]
    from moto.ec2.responses import EC2Response

    EC2Response._determine_resource = prefix_list_resource  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    install()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
