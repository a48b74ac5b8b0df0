"""The host bootstrap, run for real: the AWS API emulator on loopback holds the secrets, a local
PostgreSQL 15 accepts TLS logins only (like RDS with rds.force_ssl), and the real bootstrap script
runs twice in a row; the second run changes nothing. Docker cannot run here: a recording ``docker``
stand-in on PATH shows what a refresh would recreate or reload. Secret hygiene is checked on every
path: a recording PATH captures every program's arguments and environment, and failures are
injected (database down, AWS unreachable, access denied, Elastic IP never attached)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from config import ROOT
from config.facts import (
    APP_DB_USER,
    DB_MASTER_USER,
    DB_NAME,
    ORTHANC_ADMIN_USER,
)
from tests.bootstrap.conftest import SITE_DNS, SITE_IP
from tools.harness.awsproxy import AwsProxy
from tools.harness.pki import issue, make_ca, make_server_cert

pytestmark = pytest.mark.programs


# -- the happy path ---------------------------------------------------------------------------------


def test_first_run_creates_secrets_role_and_files(site):
    log = site.bootstrap()
    admin, tls = site.secret("admin"), site.secret("tls")
    assert admin["username"] == ORTHANC_ADMIN_USER and len(admin["password"]) >= 32
    assert admin["db_username"] == APP_DB_USER
    assert "created" in log and "database role orthanc: created" in log
    # Orthanc's connection works with verify-full against the (test) RDS CA, as the app role, not the master.
    assert site.connect() == APP_DB_USER
    owner_sql = f"select pg_get_userbyid(datdba) from pg_database where datname='{DB_NAME}'"  # noqa: S608
    assert site.pg.psql_superuser(owner_sql) == APP_DB_USER
    uri = (site.run / "secrets" / "db-connection-uri").read_text()
    assert "sslmode=verify-full" in uri and DB_MASTER_USER not in uri
    assert json.loads((site.run / "secrets" / "registered-users").read_text()) == {
        ORTHANC_ADMIN_USER: admin["password"]
    }
    for path in ("secrets/db-connection-uri", "secrets/registered-users", "nginx/site-cert.pem", "nginx/site-key.pem"):
        mode = stat.S_IMODE((site.run / path).stat().st_mode)
        assert mode == 0o600, f"{path} is {oct(mode)}"
    for folder in ("secrets", "nginx", "aws"):
        assert stat.S_IMODE((site.run / folder).stat().st_mode) == 0o700
    for value in (admin["password"], admin["db_password"], site.master_pw):
        assert value not in log
    assert "PRIVATE KEY" not in log
    assert tls["cert"].count("BEGIN CERTIFICATE") == 2
    assert "ca_key" not in tls, "the CA key lives in its own secret, not with the server certificate nginx reads"


def test_certificate_is_acceptable_to_macos_and_names_the_site(site):
    site.bootstrap()
    tls = site.secret("tls")
    cert = x509.load_pem_x509_certificate(tls["cert"].encode())
    ca = x509.load_pem_x509_certificate(site.secret("ca")["ca_cert"].encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {SITE_DNS, "pacs.example.org"}
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [SITE_IP]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 825
    assert cert.not_valid_before_utc <= datetime.now(UTC)
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)


def test_site_ca_can_only_vouch_for_the_site(site, tmp_path):
    """Name constraints read back with openssl, and a certificate for another name made with the CA's
    own key is refused by openssl verify."""
    site.bootstrap()
    ca = site.secret("ca")
    (tmp_path / "ca.crt").write_text(ca["ca_cert"])
    (tmp_path / "ca.key").write_text(ca["ca_key"])
    text = subprocess.run(
        ["openssl", "x509", "-in", str(tmp_path / "ca.crt"), "-noout", "-text"], capture_output=True, text=True
    ).stdout
    constraints = text.split("X509v3 Name Constraints: critical", 1)[1].split("X509v3", 1)[0]
    assert "Permitted:" in constraints
    assert f"DNS:{SITE_DNS}" in constraints and "DNS:pacs.example.org" in constraints
    assert f"IP:{SITE_IP}/255.255.255.255" in constraints
    assert "Excluded" not in constraints and "DNS:example.org\n" not in constraints
    # The CA's own key signs a certificate for a bank: verification fails on the constraint.
    rogue = issue(tmp_path / "rogue", _as_pki(tmp_path), "bank", "DNS:www.bank.example")
    proc = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(rogue.cert)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "permitted subtree violation" in proc.stdout + proc.stderr
    own = issue(tmp_path / "own", _as_pki(tmp_path), "own", f"DNS:{SITE_DNS}")
    ok = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(own.cert)], capture_output=True)
    assert ok.returncode == 0, "a certificate for the site's own name verifies (positive control)"


def _as_pki(folder: Path):
    from tools.harness.pki import Certificate

    return Certificate(folder / "ca.crt", folder / "ca.key")


def test_second_run_changes_nothing(site):
    site.bootstrap()
    before = {p: p.read_bytes() for p in (site.run / "secrets").iterdir()} | {
        p: p.read_bytes() for p in (site.run / "nginx").iterdir()
    }
    versions = (site.versions("admin"), site.versions("tls"), site.versions("ca"))
    log = site.bootstrap()
    assert "created" not in log and "replaced" not in log
    assert "database role orthanc: present, unchanged" in log
    assert "runtime files: unchanged" in log and "server certificate: current" in log
    assert (site.versions("admin"), site.versions("tls"), site.versions("ca")) == versions
    assert {p: p.read_bytes() for p in before} == before


def test_replaced_host_presents_the_same_certificate(site):
    site.bootstrap()
    first = (site.run / "nginx" / "site-cert.pem").read_text()
    # A new host: empty /run, same secrets.
    shutil.rmtree(site.run)
    log = site.bootstrap()
    assert "generated a site CA" not in log and "issued a server certificate" not in log
    assert (site.run / "nginx" / "site-cert.pem").read_text() == first


def test_refresh_follows_a_rotated_db_password_and_reloads_nginx(site):
    site.bootstrap()
    admin = site.secret("admin")
    # An operator rotates the app role's password: database first, then the secret.
    new_pw = "rotated-" + os.urandom(12).hex()
    site.pg.psql_superuser(f"ALTER ROLE {APP_DB_USER} PASSWORD '{new_pw}'")
    site.sm.put_secret_value(SecretId=site.arns["admin"], SecretString=json.dumps({**admin, "db_password": new_pw}))
    log = site.bootstrap("refresh")
    assert "runtime files changed: db-connection-uri" in log
    calls = (site.tmp / "docker-calls").read_text().splitlines()
    recreate = next(i for i, c in enumerate(calls) if "up -d --force-recreate --no-deps orthanc" in c)
    # nginx resolved the old container's address: it must look again once Orthanc is recreated.
    reload = next(i for i, c in enumerate(calls) if c.endswith("exec -T nginx nginx -s reload"))
    assert reload > recreate and not any("force-recreate --no-deps nginx" in c for c in calls)
    assert all("--env-file" in c for c in calls)
    assert site.connect() == APP_DB_USER
    assert new_pw not in log


def test_rds_master_rotation_is_followed_when_the_role_needs_repair(site):
    site.bootstrap()
    # RDS rotates its managed master password (database and secret together) ...
    new_master = "master2-" + os.urandom(8).hex()
    site.pg.psql_superuser(f"ALTER ROLE {DB_MASTER_USER} PASSWORD '{new_master}'")
    site.sm.put_secret_value(
        SecretId=site.arns["db"], SecretString=json.dumps({"username": DB_MASTER_USER, "password": new_master})
    )
    site.pg.password = new_master
    # ... and Orthanc is unaffected: it never used the master credentials.
    assert "database role orthanc: present, unchanged" in site.bootstrap()
    # If the app role is broken, the bootstrap repairs it with the rotated master password.
    site.pg.psql_superuser(f"ALTER ROLE {APP_DB_USER} PASSWORD NULL")
    assert "database role orthanc: created or password reset" in site.bootstrap()
    assert site.connect() == APP_DB_USER


def _your_own_certificate(site):
    """A certificate of the hospital's CA in a secret of the user's, named in site.env."""
    ca = make_ca(site.tmp / "byo", "Hospital CA")
    own = make_server_cert(site.tmp / "byo", ca, "pacs", "DNS:pacs.example.org")
    arn = site.sm.create_secret(
        Name=f"{site.prefix}/my-cert",
        SecretString=json.dumps({"cert": own.cert.read_text() + ca.cert.read_text(), "key": own.key.read_text()}),
    )["ARN"]
    with open(site.etc / "site.env", "a") as env:
        env.write(f"BYO_TLS_SECRET='{arn}'\n")
    return own


def test_bring_your_own_certificate(site):
    own = _your_own_certificate(site)
    log = site.bootstrap()
    assert "using your certificate" in log
    assert (site.run / "nginx" / "site-key.pem").read_text() == own.key.read_text()
    for name in ("tls", "ca"):
        with pytest.raises(Exception, match="ResourceNotFound"):
            site.secret(name)  # no self-signed CA or certificate was made


def test_your_own_certificate_with_a_tls_modality_reads_the_ca_key_once_and_publishes_its_certificate(site):
    """Orthanc's DICOM TLS client certificate comes from the site CA even when the server's is yours:
    the CA is made and its certificate published once (the modality must trust it: output ca_secret);
    the refreshes that follow read no key."""
    _your_own_certificate(site)
    (site.etc / "modality-ca.pem").write_text(make_ca(site.tmp / "modality-ca", "Modality CA").cert.read_text())

    def reads() -> list[str]:
        with AwsProxy(site.emulator_endpoint) as proxy:
            site.bootstrap(ORTHWEB_AWS_ENDPOINT=proxy.endpoint)
        return [c.kind for c in proxy.calls if c.operation == "GetSecretValue"]

    assert "site-ca" in reads()
    assert site.secret("ca_cert") == {"ca_cert": site.secret("ca")["ca_cert"]}
    for _ in range(2):
        assert "site-ca" not in reads()


def test_orthancs_dicom_tls_identity_is_made_when_a_modality_has_tls_and_kept(site):
    """No modality with tls: no identity. With their CA in the bundle: a clientAuth certificate from
    the site CA for the site's names, its key root-only on this host, kept by the next run."""
    site.bootstrap()
    assert not (site.run / "dicom-tls").exists()
    (site.etc / "modality-ca.pem").write_text(
        make_ca(site.tmp / "modality-ca", "Hospital modality CA").cert.read_text()
    )
    log = site.bootstrap()
    assert "issued Orthanc's DICOM TLS client certificate" in log
    cert_path, key_path = site.run / "dicom-tls" / "orthanc-cert.pem", site.run / "dicom-tls" / "orthanc-key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600 and "PRIVATE KEY" in key_path.read_text()
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    site_ca = x509.load_pem_x509_certificate(site.secret("ca")["ca_cert"].encode())
    assert cert.issuer == site_ca.subject
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert SITE_DNS in names.get_values_for_type(x509.DNSName)
    first = cert_path.read_text()
    assert "issued Orthanc's DICOM TLS" not in site.bootstrap() and cert_path.read_text() == first


def test_orthanc_gets_short_lived_credentials_of_its_own_role(site):
    site.bootstrap()
    first = (site.run / "aws" / "credentials").read_text()
    assert first.startswith("[default]\n") and "aws_session_token = " in first
    assert stat.S_IMODE((site.run / "aws" / "credentials").stat().st_mode) == 0o600
    site.bootstrap()
    assert (site.run / "aws" / "credentials").read_text() != first, "renewed at every run"


# -- the certificate follows the site ---------------------------------------------------------------------


def test_a_new_site_name_reaches_the_certificate(site):
    site.bootstrap()
    old_ca = site.secret("ca")["ca_cert"]
    site.set_env(SITE_NAME="imaging.example.org")
    log = site.bootstrap()
    cert = x509.load_pem_x509_certificate(site.secret("tls")["cert"].encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {SITE_DNS, "imaging.example.org"}
    # The old CA's constraints do not cover the new name: a new CA, said loudly.
    assert "beyond the site CA's name constraints" in log and site.secret("ca")["ca_cert"] != old_ca
    assert (site.run / "nginx" / "site-cert.pem").read_text() == site.secret("tls")["cert"]


def test_named_users_reach_orthanc_with_their_roles_and_nginx_with_their_logins(site):
    """The users secret (`make user`) as the host applies it: enabled users registered with Orthanc
    beside the admin, each one's role for the roles script, every login in nginx's failed-login map;
    a disabled user, an unknown role and a user named like the admin are left out. A change is a
    change of Orthanc's secret files, so the refresh recreates Orthanc."""
    site.bootstrap()
    users = {
        "vera": {"role": "viewer", "password": "pw-vera", "enabled": True},
        "otto": {"role": "viewer", "password": "pw-otto", "enabled": False},
        "mal": {"role": "root", "password": "pw-mal", "enabled": True},
        "admin": {"role": "viewer", "password": "pw-admin", "enabled": True},
    }
    site.sm.put_secret_value(SecretId=site.arns["users"], SecretString=json.dumps({"users": users}))
    log = site.bootstrap("refresh")
    registered = json.loads((site.run / "secrets" / "registered-users").read_text())
    roles = json.loads((site.run / "secrets" / "user-roles").read_text())
    assert set(registered) == {"admin", "vera"} and registered["vera"] == "pw-vera"
    assert registered["admin"] == site.secret("admin")["password"], "the admin keeps the break-glass password"
    assert roles == {"admin": "admin", "vera": "viewer"}
    assert stat.S_IMODE((site.run / "secrets" / "user-roles").stat().st_mode) == 0o600
    logins = (site.run / "nginx" / "users.map").read_text()
    assert logins.count("Basic ") == 2 and "pw-vera" not in logins, "base64 of user:password, one per login"
    assert "recreating orthanc" in log and "force-recreate --no-deps orthanc" in (site.tmp / "docker-calls").read_text()


def test_the_site_ca_key_is_read_only_to_issue_a_certificate(site):
    """The CA key lives in its own secret, read at the first boot, at a renewal and for new names;
    a run with current certificates reads only the certificate-only secret, which clients fetch
    (no key in it). Seen from the calls the host makes (the recording proxy in front of AWS)."""

    def reads(**extra: str) -> list[str]:
        with AwsProxy(site.emulator_endpoint) as proxy:
            site.bootstrap(ORTHWEB_AWS_ENDPOINT=proxy.endpoint, **extra)
        return [c.kind for c in proxy.calls if c.operation == "GetSecretValue"]

    assert "site-ca" in reads()  # first boot: the CA is made and the certificate issued
    published = site.secret("ca_cert")
    assert published == {"ca_cert": site.secret("ca")["ca_cert"]} and "PRIVATE KEY" not in json.dumps(published)
    assert site.versions("ca_cert") == 1
    (site.etc / "modality-ca.pem").write_text(make_ca(site.tmp / "modality-ca", "Modality CA").cert.read_text())
    assert "site-ca" in reads()  # Orthanc's DICOM TLS client certificate is issued: the key is read
    for _ in range(2):  # the refreshes that follow: current certificates, no key read
        found = reads()
        assert "site-ca" not in found and "site-ca-cert" in found and "site-tls" in found, found
    assert "site-ca" in reads(ORTHWEB_RENEW_DAYS="900")  # a renewal reads it again
    assert site.versions("ca_cert") == 1, "the same CA certificate is not published twice"


def test_the_server_certificate_is_renewed_before_it_expires_by_the_same_ca(site):
    site.bootstrap()
    ca_before, cert_before = site.secret("ca")["ca_cert"], site.secret("tls")["cert"]
    versions = site.versions("tls")
    # 900 days of lead time: an 825-day certificate is due at once.
    log = site.bootstrap("refresh", ORTHWEB_RENEW_DAYS="900")
    assert "secret " in log and "replaced (names, issuer or expiry)" in log
    assert site.versions("tls") == versions + 1 and site.secret("ca")["ca_cert"] == ca_before
    renewed = x509.load_pem_x509_certificate(site.secret("tls")["cert"].encode())
    assert renewed.serial_number != x509.load_pem_x509_certificate(cert_before.encode()).serial_number
    renewed.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_before.encode()))
    calls = (site.tmp / "docker-calls").read_text()
    assert "exec -T nginx nginx -s reload" in calls and "force-recreate --no-deps nginx" not in calls


def test_dicom_client_trust_files(site, tmp_path):
    """With client certificates required, nginx gets the client CA and CRL from the operators'
    secret; before the first certificate is issued, an anchor nobody holds the key of."""
    site.set_env(DICOM_CLIENT_AUTH="certificate")
    site.bootstrap()
    anchor = (site.run / "nginx" / "client-ca.pem").read_text()
    assert (
        "no DICOM client certificate issued yet"
        in subprocess.run(
            ["openssl", "x509", "-noout", "-subject"], input=anchor, capture_output=True, text=True
        ).stdout
    )
    anchor_crl = (site.run / "nginx" / "client-crl.pem").read_text()
    crl = subprocess.run(
        ["openssl", "crl", "-noout", "-nextupdate"],
        input=anchor_crl,
        capture_output=True,
        text=True,
    )
    assert crl.returncode == 0 and "nextUpdate=" in crl.stdout
    assert "client-ca.pem" not in site.bootstrap("refresh"), "the placeholder is kept, not made again"
    # An operator issues the first certificate with the operator command (client CA in the secrets).
    site.sm.create_secret(Name=f"{site.prefix}/dicom-client-ca")
    issued = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.ops.modalities",
            "--site",
            site.prefix,
            "--region",
            "us-east-1",
            "--endpoint-url",
            site.env["ORTHWEB_AWS_ENDPOINT"],
            "issue",
            "CT1",
            "--out",
            str(tmp_path / "ct1"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **{k: v for k, v in site.env.items() if k.startswith("AWS_")}},
    )
    assert issued.returncode == 0, issued.stdout + issued.stderr
    log = site.bootstrap("refresh")
    clients = site.secret("clients")
    assert (site.run / "nginx" / "client-ca.pem").read_text() == clients["ca_cert"]
    assert (site.run / "nginx" / "client-crl.pem").read_text() == clients["crl"]
    assert "client-ca.pem" in log and "exec -T nginx nginx -s reload" in (site.tmp / "docker-calls").read_text()
    # A CRL that does not match the CA is refused; nginx keeps the files it has.
    site.sm.put_secret_value(SecretId=site.arns["clients"], SecretString=json.dumps({**clients, "crl": anchor_crl}))
    refused = site.bootstrap("refresh", ok=False)
    assert "do not match" in refused and (site.run / "nginx" / "client-ca.pem").read_text() == clients["ca_cert"]
