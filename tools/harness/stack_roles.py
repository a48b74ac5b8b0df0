"""The stack's IAM roles on a site Terraform did not build (the local site, the systemd boot test).

Reads a role's inline policies and trust policy from the synthesized JSON and fills in each
Terraform reference (``${aws_secretsmanager_secret.admin_secret.arn}``) from a table of the site's
own values, keyed by the reference without cdktf's hash (``aws_secretsmanager_secret.admin_secret.arn``).
A reference the table lacks is an error, never a wildcard: a wildcard would widen the policy the
test means to hold the host to. The rehearsal needs none of this (Terraform applies the real roles).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tools.ops.tfjson import Address, Stack, stable_name

_INTERPOLATION = re.compile(r"\$\{([^{}]+)\}")
_REFERENCE = re.compile(r"^(data\.)?([a-z0-9_]+)\.([A-Za-z0-9_-]+)((?:\.[A-Za-z0-9_]+|\[\d+\])+)$")


class UnknownReference(KeyError):
    """A reference in a policy that the site's table does not give a value for."""


def stable_reference(expression: str) -> str:
    """``data.aws_region.account_region_154F2A67.name`` -> ``data.aws_region.account_region.name``."""
    m = _REFERENCE.match(expression.strip())
    if not m:
        raise UnknownReference(f"not a plain reference: ${{{expression}}}")
    return f"{m[1] or ''}{m[2]}.{stable_name(m[3])}{m[4]}"


def fill(text: str, values: Mapping[str, str]) -> str:
    """``text`` with every ``${reference}`` replaced by its value in ``values``."""

    def one(m: re.Match[str]) -> str:
        key = stable_reference(m[1])
        if key not in values:
            raise UnknownReference(f"no value for {key} (add it to the site's table)")
        return values[key]

    return _INTERPOLATION.sub(one, text)


@dataclass(frozen=True)
class RoleDocuments:
    """A role of the stack as IAM documents with the site's values in place."""

    name: str
    trust: str
    policies: dict[str, str]


def role_documents(data: Mapping[str, Any], role_name: str, values: Mapping[str, str]) -> RoleDocuments:
    stack = Stack.from_json(data)
    roles = [a for a, body in stack.of_type("aws_iam_role").items() if body.get("name") == role_name]
    if len(roles) != 1:
        raise KeyError(f"the stack has {len(roles)} roles named {role_name}")
    role: Address = roles[0]

    def document(policy: Any) -> str:
        statements = stack.policy_statements(policy)
        return fill(json.dumps({"Version": "2012-10-17", "Statement": statements}), values)

    policies = {
        str(body["name"]): document(body.get("policy"))
        for body in stack.of_type("aws_iam_role_policy").values()
        if role in stack.targets(body.get("role", ""), "aws_iam_role")
    }
    return RoleDocuments(role_name, document(stack.body(role).get("assume_role_policy")), policies)


def derived_values(data: Mapping[str, Any], *, partition: str, region: str, account: str) -> dict[str, str]:
    """What the site's table can take from the JSON itself: the account's partition, region and id,
    and the ARNs of log groups (by their names) and of KMS keys (no such key on a local site: a
    name no call can succeed with)."""
    stack = Stack.from_json(data)
    values: dict[str, str] = {}
    for address in stack.data_sources:
        if address.type == "aws_partition":
            values[f"data.aws_partition.{address.stable.split('.')[-1]}.partition"] = partition
        elif address.type == "aws_region":
            values[f"data.aws_region.{address.stable.split('.')[-1]}.name"] = region
        elif address.type == "aws_caller_identity":
            values[f"data.aws_caller_identity.{address.stable.split('.')[-1]}.account_id"] = account
    for address, body in stack.of_type("aws_cloudwatch_log_group").items():
        name = fill(str(body.get("name", "")), values)
        values[f"{address.stable}.arn"] = f"arn:{partition}:logs:{region}:{account}:log-group:{name}"
    for address in stack.of_type("aws_kms_key"):
        values[f"{address.stable}.arn"] = f"arn:{partition}:kms:{region}:{account}:key/local-{address.logical_id}"
    return values
