"""The host bootstrap, run for real: the AWS API emulator on loopback holds the secrets, a local
PostgreSQL 15 accepts TLS logins only (like RDS with rds.force_ssl), and the real bootstrap script
runs twice in a row; the second run changes nothing. Docker cannot run here: a recording ``docker``
stand-in on PATH shows what a refresh would recreate or reload. Secret hygiene is checked on every
path: a recording PATH captures every program's arguments and environment, and failures are
injected (database down, AWS unreachable, access denied, Elastic IP never attached)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from config import ROOT
from config.facts import (
    ADMIN_SECRET,
    APP_DB_USER,
    CA_SECRET,
    CLIENTS_SECRET,
    DB_MASTER_USER,
    DB_NAME,
    ORTHANC_ADMIN_USER,
    TLS_SECRET,
)
from tools.harness.emulator import Emulator
from tools.harness.hostsim import bootstrap_env, run_bootstrap
from tools.harness.localpg import PG_BIN, LocalPostgres
from tools.harness.pki import issue, make_ca, make_server_cert
from userdata import HostValues, site_env

pytestmark = pytest.mark.programs
BOOTSTRAP = ROOT / "userdata" / "bootstrap.sh"
SITE_DNS = "ec2-203-0-113-10.compute-1.amazonaws.com"
SITE_IP = "203.0.113.10"
# Every program the bootstrap runs: the recording PATH wraps each of them.
PROGRAMS = ("aws", "psql", "python3", "openssl", "curl", "docker", "sha256sum", "cmp", "flock", "mktemp", "tar")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with Emulator(tmp_path_factory.mktemp("emulator")) as emu:
        yield emu


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "Test RDS CA")
    return ca, make_server_cert(folder, ca, "db")


def _recorder(folder: Path, log: Path) -> None:
    """STAND-IN wrappers: each records its arguments and environment (NUL-separated), then runs the real program."""
    folder.mkdir()
    for name in PROGRAMS:
        real = shutil.which(name, path=f"/usr/bin:/bin:{PG_BIN}")
        if not real:
            continue
        wrapper = folder / name
        wrapper.write_text(
            "#!/bin/bash\n"
            f'{{ printf "%s\\0" "ARGV" "$0" "$@"; env -0; printf "\\n"; }} >> "{log}"\n'
            f'exec "{real}" "$@"\n'
        )
        wrapper.chmod(0o755)


@pytest.fixture
def site(tmp_path, emulator, pki):
    """One host's world: secrets in the emulator, a TLS-only PostgreSQL, and its /etc and /run folders."""
    ca, server = pki
    sm = boto3.client("secretsmanager", **emulator.boto_kwargs())
    iam = boto3.client("iam", **emulator.boto_kwargs())
    prefix = "t" + os.urandom(5).hex()  # a valid site name, unique in the shared emulator
    master_pw = "master-" + os.urandom(8).hex()
    arns = {
        label: sm.create_secret(Name=f"{prefix}/{suffix}")["ARN"]
        for label, suffix in (
            ("admin", ADMIN_SECRET),
            ("tls", TLS_SECRET),
            ("ca", CA_SECRET),
            ("clients", CLIENTS_SECRET),
        )
    }
    arns["db"] = sm.create_secret(
        Name=f"rds!db-{prefix}", SecretString=json.dumps({"username": DB_MASTER_USER, "password": master_pw})
    )["ARN"]
    role = iam.create_role(RoleName=f"{prefix}-orthanc"[:64], AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    pg = LocalPostgres(server, DB_MASTER_USER, master_pw, DB_NAME).start()
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    (etc / "rds-ca.pem").write_text(ca.cert.read_text())
    values = HostValues(
        region="us-east-1",
        bucket="orthweb-dicom-test",
        admin_secret_arn=arns["admin"],
        tls_secret_arn=arns["tls"],
        ca_secret_arn=arns["ca"],
        clients_secret_arn=arns["clients"],
        db_secret_arn=arns["db"],
        db_host="localhost",
        db_port=str(pg.port),
        db_name=DB_NAME,
        site_dns=SITE_DNS,
        site_ip=SITE_IP,
        log_group="/orthweb/containers",
        orthanc_role_arn=role,
        config_bucket="orthweb-config-test",
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
    # Temporary files of programs the bootstrap calls land here, where a test can look for leftovers.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**bootstrap_env(etc, run, emulator, extra_path=[fakebin]), "TMPDIR": str(scratch)}

    class Site:
        pass

    s: Any = Site()
    s.sm, s.arns, s.pg, s.etc, s.run, s.env, s.tmp = sm, arns, pg, etc, run, env, tmp_path
    s.master_pw, s.values, s.scratch, s.prefix = master_pw, values, scratch, prefix

    def bootstrap(step: str = "secrets", ok: bool = True, **extra: str) -> str:
        proc = run_bootstrap(BOOTSTRAP, step, {**s.env, **extra})
        assert (proc.returncode == 0) is ok, proc.stdout + proc.stderr
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

    def set_env(**changes: str) -> None:
        text = (etc / "site.env").read_text()
        for key, value in changes.items():
            text = re.sub(rf"^{key}='[^']*'$", f"{key}='{value}'", text, flags=re.M)
        (etc / "site.env").write_text(text)

    def recording() -> Path:
        log = tmp_path / "calls.log"
        _recorder(tmp_path / "recbin", log)
        s.env = {**s.env, "PATH": f"{tmp_path / 'recbin'}:{s.env['PATH']}"}
        return log

    s.bootstrap, s.secret, s.versions, s.connect = bootstrap, secret, versions, connect_with_runtime_uri
    s.set_env, s.recording = set_env, recording
    yield s
    pg.stop()


def secret_values(site) -> list[str]:
    """Every secret value the run handled: passwords, private keys (each line), role credentials."""
    admin, ca, tls = site.secret("admin"), site.secret("ca"), site.secret("tls")
    values = [admin["password"], admin["db_password"], site.master_pw]
    for pem in (ca["ca_key"], tls["key"]):
        values += [line for line in pem.splitlines() if len(line) > 40]
    creds = (site.run / "aws" / "credentials").read_text()
    values += re.findall(r"^aws_(?:secret_access_key|session_token) = (\S+)$", creds, re.M)
    return values


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


def test_bring_your_own_certificate(site):
    ca = make_ca(site.tmp / "byo", "Hospital CA")
    own = make_server_cert(site.tmp / "byo", ca, "pacs", "DNS:pacs.example.org")
    arn = site.sm.create_secret(
        Name=f"{site.prefix}/my-cert",
        SecretString=json.dumps({"cert": own.cert.read_text() + ca.cert.read_text(), "key": own.key.read_text()}),
    )["ARN"]
    with open(site.etc / "site.env", "a") as env:
        env.write(f"BYO_TLS_SECRET='{arn}'\n")
    log = site.bootstrap()
    assert "using your certificate" in log
    assert (site.run / "nginx" / "site-key.pem").read_text() == own.key.read_text()
    for name in ("tls", "ca"):
        with pytest.raises(Exception, match="ResourceNotFound"):
            site.secret(name)  # no self-signed CA or certificate was made


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


# -- secret hygiene on every path --------------------------------------------------------------------


def test_no_secret_in_any_process_argument_or_environment(site):
    calls = site.recording()
    site.bootstrap()
    admin = site.secret("admin")
    # A rotation and a role repair exercise the other paths that handle secrets.
    site.sm.put_secret_value(
        SecretId=site.arns["admin"],
        SecretString=json.dumps({**admin, "db_password": "rotated-" + os.urandom(12).hex()}),
    )
    site.bootstrap("refresh")
    recorded = calls.read_text()
    assert recorded.count("ARGV\0") > 50, "the recorder saw the programs run"
    leaked = [value[:6] + "..." for value in secret_values(site) if value in recorded]
    assert not leaked, f"secret values in process arguments or environments: {leaked}"


def _leftovers(site, values: list[str]) -> list[str]:
    found = []
    for root in (site.scratch, site.run):
        for path in root.rglob("*"):
            if path.is_file() and path.parent.name not in ("secrets", "nginx", "aws"):
                text = path.read_bytes().decode(errors="replace")
                if any(v in text for v in values) or "PRIVATE KEY" in text:
                    found.append(str(path.relative_to(site.tmp)))
    found += [str(p.relative_to(site.tmp)) for p in site.run.glob("work.*")]
    return found


def test_a_failing_database_leaves_no_secret_file(site):
    site.bootstrap()
    site.pg.psql_superuser(f"ALTER ROLE {APP_DB_USER} PASSWORD NULL")  # the role must be repaired ...
    site.pg.stop(remove=False)  # ... and the database is down (RDS maintenance)
    log = site.bootstrap(ok=False)
    assert "cannot create the database role" in log
    assert _leftovers(site, [site.master_pw, site.secret("admin")["db_password"]]) == []


def test_an_unreachable_aws_api_leaves_no_secret_file(site):
    site.bootstrap()
    log = site.bootstrap(ok=False, ORTHWEB_AWS_ENDPOINT="http://127.0.0.1:9")
    assert "reading secret" in log and "failed" in log
    assert _leftovers(site, [site.master_pw, site.secret("admin")["password"]]) == []


def test_a_refused_write_is_not_taken_for_another_host(site, tmp_path):
    """PutSecretValue refused (AccessDenied): the old bootstrap said "another host stored it first"."""
    real = shutil.which("aws")
    fake = tmp_path / "denybin"
    fake.mkdir()
    (fake / "aws").write_text(
        "#!/bin/bash\n# STAND-IN: refuses put-secret-value the way IAM does.\n"
        'for a in "$@"; do if [ "$a" = put-secret-value ]; then\n'
        '  echo "An error occurred (AccessDeniedException) when calling the PutSecretValue operation" >&2; exit 254\n'
        "fi; done\n"
        f'exec "{real}" "$@"\n'
    )
    (fake / "aws").chmod(0o755)
    log = site.bootstrap(ok=False, PATH=f"{fake}:{site.env['PATH']}")
    assert "another host stored it first" not in log
    assert "AccessDeniedException" in log and "cannot store secret" in log
    assert _leftovers(site, [site.master_pw]) == []


def test_the_master_secret_is_read_only_when_the_role_needs_it(site):
    site.bootstrap()
    calls = site.recording()
    site.bootstrap()
    reads = [c for c in calls.read_text().split("ARGV\0") if "get-secret-value" in c]
    assert reads and not any(site.arns["db"] in c for c in reads), "a run with a working role reads no master secret"
    site.pg.psql_superuser(f"ALTER ROLE {APP_DB_USER} PASSWORD NULL")
    site.bootstrap()
    assert any(site.arns["db"] in c for c in calls.read_text().split("ARGV\0") if "get-secret-value" in c)


# -- booting: retried, with backoff, cleaning up every time --------------------------------------------------


def _fake_imds(folder: Path, counter: Path, attach_on: int) -> None:
    """STAND-IN for the instance metadata service: the Elastic IP shows up on the Nth boot attempt."""
    folder.mkdir(exist_ok=True)
    (folder / "curl").write_text(
        "#!/bin/bash\n# STAND-IN for curl against instance metadata.\n"
        'case "$*" in\n'
        "  *api/token*) echo token ;;\n"
        f'  *public-ipv4*) n=$(cat "{counter}" 2>/dev/null || echo 0); '
        f'if [ "$n" -ge {attach_on} ]; then echo {SITE_IP}; else echo 198.51.100.7; fi ;;\n'
        "  *) exit 7 ;;\nesac\n"
    )
    (folder / "curl").chmod(0o755)


def run_unit_like_systemd(unit: Path, env: dict[str, str], counter: Path, max_attempts: int = 5) -> list[int]:
    """STAND-IN for systemd (not running here): runs the unit's ExecStart lines in order and, as
    Restart=on-failure says, starts again after a failure; returns each attempt's exit code."""
    text = unit.read_text()
    assert re.search(r"^Restart=on-failure$", text, re.M) and re.search(r"^StartLimitIntervalSec=0$", text, re.M)
    commands = re.findall(r"^ExecStart=(.+)$", text, re.M)
    codes = []
    for attempt in range(1, max_attempts + 1):
        counter.write_text(str(attempt))
        code = 0
        for command in commands:
            program, *args = command.split()
            if program.endswith("systemctl"):
                continue
            local = {"/usr/local/sbin/orthweb-bootstrap": str(BOOTSTRAP)}.get(program)
            if local is None:
                continue  # orthweb-fetch has its own test (the rehearsal fetches the deployed bundle)
            code = subprocess.run(["bash", local, *args], env=env, capture_output=True, text=True).returncode
            if code:
                break
        codes.append(code)
        if code == 0:
            return codes
    return codes


def test_the_boot_unit_retries_after_a_failure_with_backoff(site, tmp_path):
    unit = ROOT / "userdata" / "orthweb-boot.service"
    counter = tmp_path / "attempt"
    _fake_imds(tmp_path / "imdsbin", counter, attach_on=2)
    env = {
        **site.env,
        "PATH": f"{tmp_path / 'imdsbin'}:{site.env['PATH']}",
        "ORTHWEB_EIP_ATTEMPTS": "1",
        "ORTHWEB_BOOT_STEPS": "network secrets",
        "ORTHWEB_BACKOFF_SLEEP": "0",
    }
    codes = run_unit_like_systemd(unit, env, counter)
    assert codes == [1, 0], "the first attempt fails (no Elastic IP yet), the retry succeeds"
    assert not (site.run / "boot-attempts").exists(), "a successful boot resets the backoff"
    assert (site.run / "nginx" / "site-cert.pem").exists() and list(site.run.glob("work.*")) == []
    # The backoff: a failed attempt is remembered, the next one waits first.
    counter.write_text("0")
    env["ORTHWEB_EIP_ATTEMPTS"] = "1"
    _fake_imds(tmp_path / "imdsbin", counter, attach_on=99)
    first = subprocess.run(["bash", str(BOOTSTRAP), "boot"], env=env, capture_output=True, text=True)
    second = subprocess.run(["bash", str(BOOTSTRAP), "boot"], env=env, capture_output=True, text=True)
    assert first.returncode == second.returncode == 1
    assert "Elastic IP 203.0.113.10 was not attached" in first.stdout
    assert "boot attempt 2: waiting 15s first" in second.stdout
    assert _leftovers(site, [site.master_pw]) == []


def test_units_pass_systemd_analyze(tmp_path):
    units = [ROOT / "userdata" / n for n in ("orthweb-boot.service", "orthweb.service", "orthweb-refresh.service")]
    for unit in units:
        shutil.copy(unit, tmp_path / unit.name)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *[str(tmp_path / u.name) for u in units]],
        capture_output=True,
        text=True,
    )
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if line.strip()
        and "is not executable" not in line
        and "No such file" not in line
        and ".service" in line
        and "Failed to" not in line
        and "docker.service" not in line
    ]
    assert not problems, problems


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
