"""Host access alone: the app secrets, their recovery window, and your own certificate's secret."""

from __future__ import annotations

import json

from cdktf_cdktf_provider_aws.secretsmanager_secret import SecretsmanagerSecret

from modules.access import HostAccess, HostAccessProps
from tests.conftest import SITE_SECRETS


def props(account, **overrides) -> HostAccessProps:
    values = dict(
        name="site",
        account=account,
        key_arn="arn:aws:kms:us-east-1:123456789012:key/test",
        log_retention_days=365,
        recovery_window_days=30,
    )
    return HostAccessProps(**{**values, **overrides})


def test_secrets_use_the_given_recovery_window_and_no_value(build):
    built = build(lambda stack, account: HostAccess(stack, "access", props=props(account)))
    assert built.has(
        SecretsmanagerSecret.TF_RESOURCE_TYPE, {"name": "site/orthanc-admin", "recovery_window_in_days": 30}
    )
    assert built.has(SecretsmanagerSecret.TF_RESOURCE_TYPE, {"name": "site/site-tls", "recovery_window_in_days": 30})
    assert built.has(SecretsmanagerSecret.TF_RESOURCE_TYPE, {"name": "site/site-ca", "recovery_window_in_days": 30})
    assert "aws_secretsmanager_secret_version" not in built.data["resource"]


def host_statements(built) -> dict[str, dict]:
    docs = built.data["data"]["aws_iam_policy_document"]
    return {s["sid"]: s for key, doc in docs.items() if key.startswith("access_host-write") for s in doc["statement"]}


def test_the_host_cannot_read_the_client_ca_key_and_writes_only_what_it_generates(build):
    built = build(lambda stack, account: HostAccess(stack, "access", props=props(account)))
    secrets = built.resources(SecretsmanagerSecret.TF_RESOURCE_TYPE)
    assert set(secrets) == SITE_SECRETS
    statements = host_statements(built)
    readable, writable = statements["ReadSecrets"]["resources"], statements["WriteGeneratedSecrets"]["resources"]
    assert not any("client_ca_secret" in r for r in readable + writable), "operators alone hold the client CA key"
    assert any("clients_secret" in r for r in readable) and not any("clients_secret" in r for r in writable)
    assert any("users_secret" in r for r in readable) and not any("users_secret" in r for r in writable), (
        "operators write users"
    )
    assert sorted(r.split(".")[1] for r in writable) == ["admin_secret", "ca_cert_secret", "ca_secret", "tls_secret"]


def test_session_manager_with_the_agents_minimal_permissions_and_logged_sessions(build):
    from cdktf_cdktf_provider_aws.iam_role_policy_attachment import IamRolePolicyAttachment
    from cdktf_cdktf_provider_aws.ssm_document import SsmDocument

    built = build(lambda stack, account: HostAccess(stack, "access", props=props(account)))
    assert not built.has(IamRolePolicyAttachment.TF_RESOURCE_TYPE), "no AWS managed policy on the host role"
    actions = {a for s in host_statements(built).values() for a in s["actions"]}
    assert not any(a.startswith("ssm:GetParameter") or a.startswith("ec2messages:") for a in actions)
    assert {"ssm:UpdateInstanceInformation", "ssmmessages:OpenDataChannel"} <= actions
    document = next(iter(built.resources(SsmDocument.TF_RESOURCE_TYPE).values()))
    inputs = json.loads(document["content"])["inputs"]
    assert document["document_type"] == "Session" and inputs["cloudWatchEncryptionEnabled"] is True
    assert inputs["cloudWatchLogGroupName"].startswith("${aws_cloudwatch_log_group.access_sessions")


def test_orthanc_role_is_trusted_by_the_host_role_only(build):
    built = build(lambda stack, account: HostAccess(stack, "access", props=props(account)))
    trust = next(
        d for k, d in built.data["data"]["aws_iam_policy_document"].items() if k.startswith("access_orthanc-trust")
    )
    principals = trust["statement"][0]["principals"]
    assert len(principals) == 1 and principals[0]["type"] == "AWS"
    identifiers = principals[0]["identifiers"]
    assert len(identifiers) == 1 and identifiers[0].startswith("${aws_iam_role.access_host-role")


def test_your_own_certificate_secret_is_readable(build):
    built = build(lambda stack, account: HostAccess(stack, "access", props=props(account, byo_tls_secret="pacs/cert")))
    readable = next(
        s["resources"]
        for doc in built.data["data"]["aws_iam_policy_document"].values()
        for s in doc["statement"]
        if s.get("sid") == "ReadSecrets"
    )
    assert readable[-1].endswith(":secret:pacs/cert-??????")
