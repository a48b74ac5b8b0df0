"""The host bootstrap, run for real: the AWS API emulator on loopback holds the secrets, a local
PostgreSQL 15 accepts TLS logins only (like RDS with rds.force_ssl), and the real bootstrap script
runs twice in a row; the second run changes nothing. Docker cannot run here: a recording ``docker``
stand-in on PATH shows which containers a refresh would recreate."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from config import ROOT
from config.facts import APP_DB_USER, DB_MASTER_USER, DB_NAME, EMULATOR_PLACEHOLDER_KEY, ORTHANC_ADMIN_USER
from tools.harness.emulator import Emulator
from tools.harness.hostsim import bootstrap_env, run_bootstrap
from tools.harness.localpg import PG_BIN, LocalPostgres
from tools.harness.pki import make_ca, make_server_cert
from userdata import HostValues, site_env

pytestmark = pytest.mark.programs
BOOTSTRAP = ROOT / "userdata" / "bootstrap.sh"
MASTER_USER = DB_MASTER_USER
SITE_DNS = "ec2-203-0-113-10.compute-1.amazonaws.com"
SITE_IP = "203.0.113.10"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with Emulator(tmp_path_factory.mktemp("emulator")) as emu:
        yield emu


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "Test RDS CA")
    return ca, make_server_cert(folder, ca, "db")


@pytest.fixture
def site(tmp_path, emulator, pki):
    """One host's world: secrets in the emulator, a TLS-only PostgreSQL, and its /etc and /run folders."""
    ca, server = pki
    sm = boto3.client(
        "secretsmanager",
        region_name="us-east-1",
        endpoint_url=emulator.endpoint,
        aws_access_key_id=EMULATOR_PLACEHOLDER_KEY,
        aws_secret_access_key=EMULATOR_PLACEHOLDER_KEY,
    )
    prefix = tmp_path.name
    master_pw = "master-" + os.urandom(8).hex()
    arns = {
        "admin": sm.create_secret(Name=f"{prefix}/orthanc-admin")["ARN"],
        "tls": sm.create_secret(Name=f"{prefix}/site-tls")["ARN"],
        "db": sm.create_secret(
            Name=f"rds!db-{prefix}", SecretString=json.dumps({"username": MASTER_USER, "password": master_pw})
        )["ARN"],
    }
    pg = LocalPostgres(server, MASTER_USER, master_pw, "orthanc").start()
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    (etc / "rds-ca.pem").write_text(ca.cert.read_text())
    values = HostValues(
        region="us-east-1",
        bucket="orthweb-dicom-test",
        admin_secret_arn=arns["admin"],
        tls_secret_arn=arns["tls"],
        db_secret_arn=arns["db"],
        db_host="localhost",
        db_port=str(pg.port),
        db_name="orthanc",
        site_dns=SITE_DNS,
        site_ip=SITE_IP,
        log_group="/orthweb/containers",
        site_name="pacs.example.org",
    )
    (etc / "site.env").write_text(site_env(values))
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    docker = fakebin / "docker"
    docker.write_text(
        f'#!/bin/sh\n# Stand-in for Docker (no engine here): records the call.\necho "$*" >> {tmp_path}/docker-calls\n'
    )
    docker.chmod(0o755)
    env = bootstrap_env(etc, run, emulator, extra_path=[fakebin])

    class Site:
        pass

    s: Any = Site()
    s.sm, s.arns, s.pg, s.etc, s.run, s.env, s.tmp, s.master_pw = sm, arns, pg, etc, run, env, tmp_path, master_pw

    def bootstrap(step: str = "secrets") -> str:
        proc = run_bootstrap(BOOTSTRAP, step, s.env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    def secret(name: str) -> dict:
        return json.loads(sm.get_secret_value(SecretId=arns[name])["SecretString"])

    def versions(name: str) -> int:
        return len(sm.list_secret_version_ids(SecretId=arns[name])["Versions"])

    def connect_with_runtime_uri() -> str:
        uri = (run / "secrets" / "db-connection-uri").read_text()
        proc = subprocess.run(
            [str(PG_BIN / "psql"), "-X", "-t", "-A", "-c", "select current_user", uri], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    s.bootstrap, s.secret, s.versions, s.connect = bootstrap, secret, versions, connect_with_runtime_uri
    yield s
    pg.stop()


def test_first_run_creates_secrets_role_and_files(site):
    log = site.bootstrap()
    admin, tls = site.secret("admin"), site.secret("tls")
    assert (
        admin["username"] == ORTHANC_ADMIN_USER and len(admin["password"]) >= 32 and admin["db_username"] == APP_DB_USER
    )
    assert "created" in log and "database role orthanc: created" in log
    # Orthanc's connection works with verify-full against the (test) RDS CA, as the app role, not the master.
    assert site.connect() == APP_DB_USER
    owner_sql = f"select pg_get_userbyid(datdba) from pg_database where datname='{DB_NAME}'"  # noqa: S608
    assert site.pg.psql_superuser(owner_sql) == APP_DB_USER
    uri = (site.run / "secrets" / "db-connection-uri").read_text()
    assert "sslmode=verify-full" in uri and MASTER_USER not in uri
    assert json.loads((site.run / "secrets" / "registered-users").read_text()) == {
        ORTHANC_ADMIN_USER: admin["password"]
    }
    for name in ("db-connection-uri", "registered-users", "site-cert.pem", "site-key.pem"):
        mode = stat.S_IMODE((site.run / "secrets" / name).stat().st_mode)
        assert mode == 0o600, f"{name} is {oct(mode)}"
    assert stat.S_IMODE((site.run / "secrets").stat().st_mode) == 0o700
    # No secret value in the log.
    for value in (admin["password"], admin["db_password"], site.master_pw):
        assert value not in log
    assert "PRIVATE KEY" not in log
    assert tls["cert"].count("BEGIN CERTIFICATE") == 2


def test_certificate_is_acceptable_to_macos_and_names_the_site(site):
    site.bootstrap()
    tls = site.secret("tls")
    cert = x509.load_pem_x509_certificate(tls["cert"].encode())
    ca = x509.load_pem_x509_certificate(tls["ca_cert"].encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {SITE_DNS, "pacs.example.org"}
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [SITE_IP]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 825
    assert cert.not_valid_before_utc <= datetime.now(UTC)
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)


def test_second_run_changes_nothing(site):
    site.bootstrap()
    before = {p.name: p.read_bytes() for p in (site.run / "secrets").iterdir()}
    versions = (site.versions("admin"), site.versions("tls"))
    log = site.bootstrap()
    assert "created" not in log
    assert "database role orthanc: present, unchanged" in log
    assert "runtime secret files: unchanged" in log
    assert (site.versions("admin"), site.versions("tls")) == versions
    assert {p.name: p.read_bytes() for p in (site.run / "secrets").iterdir()} == before


def test_replaced_host_presents_the_same_certificate(site, tmp_path):
    site.bootstrap()
    first = (site.run / "secrets" / "site-cert.pem").read_text()
    # A new host: empty /run, same secrets.
    shutil.rmtree(site.run)
    log = site.bootstrap()
    assert "generated a site CA" not in log
    assert (site.run / "secrets" / "site-cert.pem").read_text() == first


def test_refresh_follows_a_rotated_db_password(site):
    site.bootstrap()
    admin = site.secret("admin")
    # An operator rotates the app role's password: database first, then the secret.
    new_pw = "rotated-" + os.urandom(12).hex()
    site.pg.psql_superuser(f"ALTER ROLE {APP_DB_USER} PASSWORD '{new_pw}'")
    site.sm.put_secret_value(SecretId=site.arns["admin"], SecretString=json.dumps({**admin, "db_password": new_pw}))
    log = site.bootstrap("refresh")
    assert "runtime secret files changed: db-connection-uri" in log
    assert "recreating orthanc" in log and "recreating nginx" not in log
    calls = (site.tmp / "docker-calls").read_text()
    assert "up -d --force-recreate --no-deps orthanc" in calls and "nginx" not in calls
    assert site.connect() == APP_DB_USER
    assert new_pw not in log


def test_rds_master_rotation_is_followed_when_the_role_needs_repair(site):
    site.bootstrap()
    # RDS rotates its managed master password (database and secret together) ...
    new_master = "master2-" + os.urandom(8).hex()
    site.pg.psql_superuser(f"ALTER ROLE {MASTER_USER} PASSWORD '{new_master}'")
    site.sm.put_secret_value(
        SecretId=site.arns["db"], SecretString=json.dumps({"username": MASTER_USER, "password": new_master})
    )
    site.pg.password = new_master
    # ... and Orthanc is unaffected: it never used the master credentials.
    assert "database role orthanc: present, unchanged" in site.bootstrap()
    # If the app role is broken, the bootstrap repairs it with the rotated master password.
    site.pg.psql_superuser(f"ALTER ROLE {APP_DB_USER} PASSWORD NULL")
    assert "database role orthanc: created or password reset" in site.bootstrap()
    assert site.connect() == APP_DB_USER


def test_bring_your_own_certificate(site):
    ca = make_ca(site.tmp / "byo", "Hospital CA")
    own = make_server_cert(site.tmp / "byo", ca, "pacs", "DNS:pacs.example.org")
    arn = site.sm.create_secret(
        Name=f"{site.tmp.name}/my-cert",
        SecretString=json.dumps({"cert": own.cert.read_text() + ca.cert.read_text(), "key": own.key.read_text()}),
    )["ARN"]
    with open(site.etc / "site.env", "a") as env:
        env.write(f"BYO_TLS_SECRET='{arn}'\n")
    log = site.bootstrap()
    assert "using your certificate" in log
    assert (site.run / "secrets" / "site-key.pem").read_text() == own.key.read_text()
    with pytest.raises(Exception, match="ResourceNotFound"):
        site.secret("tls")  # the self-signed secret was never created


def test_missing_site_env_fails_clearly(tmp_path):
    proc = subprocess.run(
        ["bash", str(BOOTSTRAP), "secrets"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "ORTHWEB_ETC": str(tmp_path), "ORTHWEB_RUN": str(tmp_path / "r")},
    )
    assert proc.returncode == 1
    assert f"missing {tmp_path}/site.env" in proc.stdout


def test_unknown_step_is_refused(site):
    proc = subprocess.run(["bash", str(BOOTSTRAP), "deploy"], env=site.env, capture_output=True, text=True)
    assert proc.returncode == 1 and "usage: orthweb-bootstrap [boot|secrets|refresh]" in proc.stdout
