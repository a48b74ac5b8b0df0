"""The host's program in pieces (userdata/host): its SigV4 signatures against botocore's signer (the
AWS SDK's own, as the oracle), AWS error answers, site.env, its settings, the shared PKI, and that it
imports on Python 3.9 (Amazon Linux 2023's python3)."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from tools.harness.hostsim import install_host_program
from tools.harness.imds import InstanceMetadata
from userdata.host import pki
from userdata.host.aws import Aws, AwsError, Credentials, Imds, _error, credentials_from, sign
from userdata.host.bootstrap import BOOT_STEPS, BootError, Settings, Site, read_site_env

WHEN = datetime.datetime(2026, 12, 3, 8, 9, 10, tzinfo=datetime.timezone.utc)  # noqa: UP017 - as the host's code


@pytest.mark.parametrize("token", ["", "FwoGZXIvYXdzEXAMPLETOKEN/+=="])
@pytest.mark.parametrize(
    ("service", "headers", "body"),
    [
        (
            "secretsmanager",
            {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "secretsmanager.GetSecretValue"},
            json.dumps({"SecretId": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:site/orthanc-admin-AbCdEf"}),
        ),
        (
            "sts",
            {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
            "Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fo&RoleSessionName=orthanc-ip-10",
        ),
    ],
)
def test_signatures_match_the_aws_sdk(service, headers, body, token, monkeypatch):
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: WHEN.replace(tzinfo=None))
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    url = Aws("eu-west-1", lambda: creds).url(service)
    ours = sign("POST", url, headers, body.encode(), service=service, region="eu-west-1", credentials=creds, now=WHEN)
    request = AWSRequest(method="POST", url=url, data=body.encode(), headers=dict(headers))
    SigV4Auth(BotoCredentials("AKIDEXAMPLE", creds.secret_key, token or None), service, "eu-west-1").add_auth(request)
    assert ours["Authorization"] == request.headers["Authorization"]
    assert ours["X-Amz-Date"] == request.headers["X-Amz-Date"]
    assert ours.get("X-Amz-Security-Token") == request.headers.get("X-Amz-Security-Token")


def test_endpoints_by_region_and_the_emulators_override():
    creds = Credentials("a", "b")
    assert Aws("eu-west-1", lambda: creds).url("sts") == "https://sts.eu-west-1.amazonaws.com/"
    assert (
        Aws("cn-north-1", lambda: creds).url("secretsmanager") == "https://secretsmanager.cn-north-1.amazonaws.com.cn/"
    )
    assert Aws("us-east-1", lambda: creds, "http://127.0.0.1:5000").url("sts") == "http://127.0.0.1:5000/"


def test_aws_errors_are_named_as_aws_names_them():
    json_error = _error("PutSecretValue", 400, b'{"__type":"com.amazonaws.x#ResourceExistsException","message":"m"}')
    assert (json_error.code, json_error.message) == ("ResourceExistsException", "m")
    xml = b"<ErrorResponse><Error><Code>AccessDenied</Code><Message>no</Message></Error></ErrorResponse>"
    assert _error("AssumeRole", 403, xml).code == "AccessDenied"
    assert _error("X", 502, b"Bad Gateway").code == "HTTP502"
    assert "AccessDenied when calling the AssumeRole operation" in str(AwsError("AssumeRole", "AccessDenied", "no"))


def test_unreachable_aws_is_an_error_after_three_attempts(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda _: None)
    aws = Aws("us-east-1", lambda: Credentials("a", "b"), "http://127.0.0.1:9")
    with pytest.raises(AwsError, match="Unreachable when calling the GetSecretValue operation"):
        aws.json_call("secretsmanager", "secretsmanager", "GetSecretValue", {"SecretId": "x"})


def test_site_env_is_read_as_cloud_init_wrote_it(tmp_path):
    path = tmp_path / "site.env"
    path.write_text("# comment\nREGION='eu-west-1'\nSITE_NAME=''\nREGION='us-east-1'\n")
    assert read_site_env(path) == {"REGION": "us-east-1", "SITE_NAME": ""}
    path.write_text("REGION=$(reboot)\n")
    with pytest.raises(BootError, match="cannot read the line 'REGION'"):
        read_site_env(path)
    with pytest.raises(BootError, match="site.env lacks REGION, ADMIN_SECRET_ARN"):
        Site({"DB_HOST": "db"})


def test_site_names_are_the_certificate_names():
    values = dict.fromkeys(Site.REQUIRED, "x")
    site = Site({**values, "SITE_DNS": "ec2.example", "SITE_IP": "203.0.113.1", "SITE_NAME": "pacs.example.org"})
    assert site.names() == ["DNS:ec2.example", "IP:203.0.113.1", "DNS:pacs.example.org"]
    extra = Site({**site.values, "SITE_EXTRA_NAMES": "IP:203.0.113.2 IP:203.0.113.3"})
    assert extra.sorted_names().split(",")[-2:] == ["IP:203.0.113.2", "IP:203.0.113.3"]


def test_boot_steps_are_checked_by_name():
    assert Settings.from_env({"ORTHWEB_BOOT_STEPS": "rds_ca services"}).boot_steps == ("rds_ca", "services")
    assert Settings.from_env({}).boot_steps == BOOT_STEPS
    with pytest.raises(BootError, match="ORTHWEB_BOOT_STEPS: unknown step\\(s\\) secrets; allowed: network"):
        Settings.from_env({"ORTHWEB_BOOT_STEPS": "secrets"})
    with pytest.raises(BootError, match="ORTHWEB_RENEW_DAYS: '90d' is not allowed; allowed: a whole number such as 90"):
        Settings.from_env({"ORTHWEB_RENEW_DAYS": "90d"})
    assert Settings.from_env({"ORTHWEB_BACKOFF_SLEEP": "0", "ORTHWEB_EIP_ATTEMPTS": "1"}).eip_attempts == 1


def test_the_site_ca_vouches_only_for_its_names_and_issues_what_the_host_checks():
    names = ["DNS:ec2.example", "IP:203.0.113.10", "DNS:pacs.example.org"]
    ca, key = pki.make_ca(pki.subject("Orthweb site CA", "Orthweb"), 30, permitted=names, bits=2048)
    assert pki.permitted_names(ca) == set(names)
    cert, _ = pki.issue(ca, key, pki.subject("ec2.example"), 825, names=names)
    assert pki.alt_names(cert) == set(names) and pki.issued_by(cert, ca)
    assert pki.not_after(cert) <= pki.not_after(ca), "never later than its CA"
    other, other_key = pki.make_ca(pki.subject("Another CA"), 30, bits=2048)
    assert not pki.issued_by(cert, other)
    crl = pki.sign_crl(other, other_key, {cert.serial_number: pki.now()}, days=10)
    assert pki.crl_signed_by(crl, other) and not pki.crl_signed_by(crl, ca)
    assert [e.serial_number for e in pki.load_crl(pki.crl_pem(crl))] == [cert.serial_number]
    bundle = pki.cert_pem(cert) + pki.cert_pem(ca)
    assert [c.subject for c in pki.load_certs(bundle)] == [cert.subject, ca.subject]
    with pytest.raises(ValueError, match="DNS:<name> or IP:<address>"):
        pki.general_name("URI:https://x")


def test_the_program_imports_on_python_3_9(tmp_path):
    """Amazon Linux 2023's python3 is 3.9: the program (less cryptography, which AL2023 packages)
    must import there. Python 3.9 comes with this machine kind (pyenv)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = sorted(pyenv.glob("versions/3.9.*/bin/python3.9")) or [Path(p) for p in [shutil.which("python3.9")] if p]
    assert found, "python3.9 comes with this machine kind (pyenv); the host program is checked against it"
    python39 = str(found[-1])
    program = install_host_program(tmp_path)
    lib = Path(program).parent.parent / "lib" / "orthweb"
    code = f"import sys; sys.path.insert(0, {str(lib)!r}); import orthweb_host.bootstrap, orthweb_host.aws; print(sys.version)"
    proc = subprocess.run([python39, "-I", "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("3.9"), proc.stderr


def test_credentials_come_from_the_instance_role_never_through_a_proxy(monkeypatch):
    role = {"AccessKeyId": "ASIAHOST", "SecretAccessKey": "host-secret", "Token": "host-token"}
    answers = {"iam/security-credentials/": "orthweb-host-role\n"}
    answers["iam/security-credentials/orthweb-host-role"] = json.dumps(role)
    # A proxy set for the whole host must not see metadata requests (nothing listens there).
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with InstanceMetadata(answers) as metadata:
        imds = Imds(metadata.endpoint)
        creds = credentials_from({}, imds)()
        assert (creds.access_key, creds.secret_key, creds.token) == ("ASIAHOST", "host-secret", "host-token")
        assert "host-secret" not in repr(creds)
        keys = credentials_from({"AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "s"}, imds)()
        assert keys.access_key == "AKIAENV", "keys in the environment come first (off EC2: the emulator's)"
    with pytest.raises(AwsError, match="NoCredentials"):
        credentials_from({}, Imds("http://127.0.0.1:9"))()


def test_the_alarms_filter_on_what_the_program_writes_where_the_agent_reads_it(default_stack, tmp_path, capsys):
    """Under systemd (LogsDirectory=) the program's lines also go to host.log, which the CloudWatch
    agent ships; the alarms' filters must match its real ERROR and WARNING lines."""
    from userdata.host import bootstrap

    try:
        assert bootstrap.main(["deploy"], {"LOGS_DIRECTORY": str(tmp_path)}) == 2
        bootstrap.log("WARNING: the site CA expires within 180 days; plan a new CA (README: Trust the site CA)")
    finally:
        bootstrap._log_to.clear()
    written = (tmp_path / bootstrap.LOG_FILE).read_text().splitlines()
    assert written == capsys.readouterr().out.splitlines() and len(written) == 2
    filters = default_stack.resources("aws_cloudwatch_log_metric_filter")
    on_host_log = [f for f in filters.values() if "host_" in f["log_group_name"] or "/host" in f["log_group_name"]]
    phrases = sorted(f["pattern"].strip('"') for f in on_host_log)
    assert phrases == ["orthweb-bootstrap: ERROR", "orthweb-bootstrap: WARNING"]
    for phrase, line in zip(phrases, written, strict=True):
        assert phrase in line, (phrase, line)
