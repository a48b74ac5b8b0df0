"""Host access alone: the app secrets, their recovery window, and your own certificate's secret."""

from __future__ import annotations

from cdktf_cdktf_provider_aws.secretsmanager_secret import SecretsmanagerSecret

from modules.access import HostAccess, HostAccessProps


def props(account, **overrides) -> HostAccessProps:
    values = dict(
        name="site",
        account=account,
        key_arn="arn:aws:kms:us-east-1:123456789012:key/test",
        bucket_arn="arn:aws:s3:::site-dicom",
        db_secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!db-x",
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
    assert "aws_secretsmanager_secret_version" not in built.data["resource"]


def test_your_own_certificate_secret_is_readable(build):
    built = build(lambda stack, account: HostAccess(stack, "access", props=props(account, byo_tls_secret="pacs/cert")))
    readable = next(
        s["resources"]
        for doc in built.data["data"]["aws_iam_policy_document"].values()
        for s in doc["statement"]
        if s.get("sid") == "ReadSecrets"
    )
    assert readable[-1].endswith(":secret:pacs/cert-??????")
