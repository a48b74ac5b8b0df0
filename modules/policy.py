"""IAM policy documents built from plain statements, computed locally by the AWS provider."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cdktf_cdktf_provider_aws.data_aws_iam_policy_document import (
    DataAwsIamPolicyDocument,
    DataAwsIamPolicyDocumentStatement,
    DataAwsIamPolicyDocumentStatementCondition,
    DataAwsIamPolicyDocumentStatementPrincipals,
)
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.iam_role_policy import IamRolePolicy
from cdktf_cdktf_provider_aws.iam_role_policy_attachment import IamRolePolicyAttachment
from constructs import Construct


@dataclass(frozen=True)
class Statement:
    """One policy statement; ``principals`` maps a principal type to identifiers."""

    actions: Sequence[str]
    resources: Sequence[str] = ("*",)
    effect: str = "Allow"
    sid: str | None = None
    principals: dict[str, Sequence[str]] = field(default_factory=dict)
    conditions: Sequence[tuple[str, str, Sequence[str]]] = ()  # (test, variable, values)


def policy_document(scope: Construct, id_: str, statements: Sequence[Statement]) -> DataAwsIamPolicyDocument:
    return DataAwsIamPolicyDocument(
        scope,
        id_,
        statement=[
            DataAwsIamPolicyDocumentStatement(
                sid=s.sid,
                effect=s.effect,
                actions=list(s.actions),
                resources=list(s.resources) or None,
                principals=[
                    DataAwsIamPolicyDocumentStatementPrincipals(type=t, identifiers=list(ids))
                    for t, ids in s.principals.items()
                ]
                or None,
                condition=[
                    DataAwsIamPolicyDocumentStatementCondition(test=t, variable=v, values=list(vals))
                    for t, v, vals in s.conditions
                ]
                or None,
            )
            for s in statements
        ],
    )


def resource_policy_json(statements: Sequence[Statement]) -> str:
    """A resource policy (key or bucket policy) as JSON text; CDKTF tokens stay Terraform references.

    Resource policies are written out rather than built with ``aws_iam_policy_document``: that data
    source is for identity policies, and scanners judge it as one (a key policy's ``"Resource": "*"``
    means "this key", not "everything").
    """

    def compact(values: Sequence[str]) -> str | list[str]:
        # AWS's own canonical form: a single value is a string (some tools read only that form).
        return values[0] if len(values) == 1 else list(values)

    def one(s: Statement) -> dict[str, Any]:
        out: dict[str, Any] = {"Effect": s.effect, "Action": compact(s.actions), "Resource": compact(s.resources)}
        if s.sid:
            out = {"Sid": s.sid, **out}
        if s.principals:
            out["Principal"] = {kind: compact(ids) for kind, ids in s.principals.items()}
        if s.conditions:
            out["Condition"] = {}
            for test, variable, values in s.conditions:
                out["Condition"].setdefault(test, {})[variable] = compact(values)
        return out

    return json.dumps({"Version": "2012-10-17", "Statement": [one(s) for s in statements]})


def assume_role_policy(
    scope: Construct,
    id_: str,
    principals: dict[str, Sequence[str]],
    conditions: Sequence[tuple[str, str, Sequence[str]]] = (),
) -> DataAwsIamPolicyDocument:
    """Trust policy letting the given principals (an AWS service, or another role) assume a role."""
    return policy_document(
        scope,
        id_,
        [Statement(actions=["sts:AssumeRole"], resources=(), principals=principals, conditions=conditions)],
    )


def service_role(
    scope: Construct,
    id_: str,
    *,
    name: str,
    service: str | None = None,
    trusted_roles: Sequence[str] = (),
    conditions: Sequence[tuple[str, str, Sequence[str]]] = (),
    inline: Sequence[Statement] = (),
    inline_name: str = "inline",
    managed_policy_arns: Sequence[str] = (),
) -> IamRole:
    """A role that an AWS ``service`` (or the ``trusted_roles``) may assume, with an optional inline
    policy and managed policy attachments."""
    principals: dict[str, Sequence[str]] = {"Service": [service]} if service else {"AWS": list(trusted_roles)}
    trust = assume_role_policy(scope, f"{id_}-trust", principals, conditions)
    role = IamRole(scope, f"{id_}-role", name=name, assume_role_policy=trust.json)
    if inline:
        grant(scope, f"{id_}", role, inline, inline_name, document_id=f"{id_}-write")
    for index, arn in enumerate(managed_policy_arns):
        IamRolePolicyAttachment(scope, f"{id_}-managed-{index}", role=role.name, policy_arn=arn)
    return role


def grant(
    scope: Construct,
    id_: str,
    role: IamRole,
    statements: Sequence[Statement],
    policy_name: str,
    *,
    document_id: str | None = None,
) -> IamRolePolicy:
    """An inline policy on ``role``: how the owner of a resource grants a role access to it."""
    document = policy_document(scope, document_id or f"{id_}-document", statements)
    return IamRolePolicy(scope, f"{id_}-policy", name=policy_name, role=role.id, policy=document.json)
