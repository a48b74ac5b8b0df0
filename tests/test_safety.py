"""Negative checks across the whole synthesized JSON: exposure, wildcards, secrets, escaping,
and the pinned logical IDs of stateful resources."""

from __future__ import annotations

import re

import pytest

from config.facts import POSTGRES_PORT, SSH_PORT
from modules.hcl import TOKEN, base64gzip_expression, escape_literal
from tests.conftest import SITE_SECRETS

PROFILES = ("default", "prod", "az3")
WORLD = ("0.0.0.0/0", "::/0")


def _covers(rule: dict, port: int) -> bool:
    return rule.get("from_port", 0) <= port <= rule.get("to_port", 65535)


@pytest.mark.parametrize("profile", PROFILES)
def test_no_world_or_any_cidr_on_postgres_or_ssh(synth_profile, profile):
    stack = synth_profile(profile)
    for rule in stack.resources("aws_vpc_security_group_ingress_rule").values():
        assert not _covers(rule, SSH_PORT), f"ingress on {SSH_PORT}: {rule}"
        if _covers(rule, POSTGRES_PORT):
            assert "cidr_ipv4" not in rule and "cidr_ipv6" not in rule, f"CIDR on {POSTGRES_PORT}: {rule}"
    for sg in stack.resources("aws_security_group").values():
        assert "ingress" not in sg and "egress" not in sg, "rules live in separate resources only"


@pytest.mark.parametrize("profile", PROFILES)
def test_no_wildcard_actions(synth_profile, profile):
    for doc in synth_profile(profile).data_sources("aws_iam_policy_document").values():
        for statement in doc["statement"]:
            if statement["effect"] == "Deny":
                continue
            for action in statement["actions"]:
                assert action != "*" and not action.endswith(":*"), f"wildcard action {action}"


SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)orthanc:orthanc"),
    re.compile(r"(?i)\"(password|passwd|secret_string|secret_key)\"\s*:\s*\"[^$]"),
]


@pytest.mark.parametrize("profile", PROFILES)
def test_no_secret_values(synth_profile, profile):
    stack = synth_profile(profile)
    text = (stack.stack_dir / "cdk.tf.json").read_text()
    for pattern in SECRET_PATTERNS:
        assert not pattern.search(text), f"secret-like value matching {pattern.pattern}"
    for forbidden in ("random_password", "aws_secretsmanager_secret_version", "aws_ssm_parameter"):
        assert forbidden not in stack.data["resource"], f"{forbidden} would put a secret value in state"
    assert "password" not in stack.one("aws_db_instance")


def _bad_interpolations(value: str) -> list[str]:
    """``${`` that Terraform would interpolate but that is not one of our references or expressions."""
    bad = []
    for match in re.finditer(r"(?<!\$)\$\{", value):
        rest = value[match.end() :]
        if not re.match(
            r"(aws_|data\.|var\.|local\.|random_|(tostring|element|base64gzip|jsonencode|join)\(|\(length\()", rest
        ):
            bad.append(value[max(0, match.start() - 20) : match.end() + 30])
    return bad


@pytest.mark.parametrize("profile", PROFILES)
def test_no_unescaped_interpolation(synth_profile, profile):
    stack = synth_profile(profile)
    bad = [b for s in stack.strings() for b in _bad_interpolations(s)]
    assert not bad, bad
    assert not any(TOKEN.search(s) for s in stack.strings()), "an unresolved CDKTF token leaked"


def test_escape_literal_makes_text_inert():
    assert escape_literal('say "hi" ${HOME} %{if} \\ \n') == 'say \\"hi\\" $${HOME} %%{if} \\\\ \\n'
    expr = base64gzip_expression("a ${X} ${TfToken[TOKEN.12]} b")
    assert expr == '${base64gzip("a $${X} ${${TfToken[TOKEN.12]}} b")}'
    assert _bad_interpolations("echo ${HOME}") and not _bad_interpolations("echo $${HOME}")


STATEFUL = {
    "aws_kms_key": {"site_key", "session_key"},
    "aws_s3_bucket": {"dicom_bucket", "log_bucket", "config_bucket"},
    "aws_db_instance": {"database"},
    "aws_secretsmanager_secret": SITE_SECRETS,
    "aws_eip": {"site_eip"},
}
# With replication (prod's default): the replicas, their access logs and their key.
REPLICA_STATEFUL = {"aws_kms_key": {"replica_key"}, "aws_s3_bucket": {"replica_bucket", "replica_log_bucket"}}


@pytest.mark.parametrize("profile", PROFILES)
def test_stateful_logical_ids_are_pinned(synth_profile, profile):
    """Renaming any of these would make Terraform destroy data (or the site's address) on the next apply."""
    stack = synth_profile(profile)
    replicated = stack.config.replication is not None
    for rtype, ids in STATEFUL.items():
        assert set(stack.resources(rtype)) == ids | (REPLICA_STATEFUL.get(rtype, set()) if replicated else set()), rtype
