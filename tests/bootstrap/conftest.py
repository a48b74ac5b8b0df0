"""The world of one host for the bootstrap tests (test_bootstrap*.py here): the AWS API emulator
on loopback holding the secrets, a local PostgreSQL 15 that accepts TLS logins only (like RDS with
rds.force_ssl), the host's /etc and /run folders, the host's program as the boot bundle installs
it, and a recording ``docker`` stand-in (Docker cannot run here)."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest

from config.facts import (
    ADMIN_SECRET,
    CA_CERT_SECRET,
    CA_SECRET,
    CLIENTS_SECRET,
    DB_MASTER_USER,
    DB_NAME,
    TLS_SECRET,
    USERS_SECRET,
)
from tools.harness.emulator import Emulator
from tools.harness.hostsim import bootstrap_env, host_program, run_bootstrap
from tools.harness.localpg import PG_BIN, LocalPostgres
from tools.harness.pki import make_ca, make_server_cert
from userdata import HostValues, site_env

SITE_DNS = "ec2-203-0-113-10.compute-1.amazonaws.com"
SITE_IP = "203.0.113.10"
# Every program the host's program may run: the recording PATH wraps each of them.
PROGRAMS = ("psql", "docker", "systemctl", "rpm", "dnf", "curl", "openssl", "aws", "python3")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with Emulator(tmp_path_factory.mktemp("emulator")) as emu:
        yield emu


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "Test RDS CA")
    return ca, make_server_cert(folder, ca, "db")


def _recorder(folder: Path, log: Path, path: str) -> None:
    """STAND-IN wrappers: each records its arguments and environment (NUL-separated), then runs the real program."""
    folder.mkdir()
    for name in PROGRAMS:
        real = shutil.which(name, path=path)
        if not real:
            continue
        _record_wrapper(folder / name, real, log)


def _record_wrapper(wrapper: Path, real: str, log: Path) -> None:
    """STAND-IN wrapper: records its arguments and environment (NUL-separated), then runs ``real``."""
    wrapper.write_text(
        f'#!/bin/bash\n{{ printf "%s\\0" "ARGV" "$0" "$@"; env -0; printf "\\n"; }} >> "{log}"\nexec "{real}" "$@"\n'
    )
    wrapper.chmod(0o755)


@pytest.fixture(scope="module")
def cluster(pki):
    """The module's TLS-only PostgreSQL; each test renews it (see ``LocalPostgres.renew``)."""
    _, server = pki
    pg = LocalPostgres(server, DB_MASTER_USER, "master-" + os.urandom(8).hex(), DB_NAME).start()
    yield pg
    pg.stop()


@pytest.fixture
def site(tmp_path, emulator, pki, cluster):
    """One host's world: secrets in the emulator, a TLS-only PostgreSQL as a new RDS instance leaves
    it, and the host's /etc and /run folders."""
    ca, _ = pki
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
            ("ca_cert", CA_CERT_SECRET),
            ("users", USERS_SECRET),
            ("clients", CLIENTS_SECRET),
        )
    }
    arns["db"] = sm.create_secret(
        Name=f"rds!db-{prefix}", SecretString=json.dumps({"username": DB_MASTER_USER, "password": master_pw})
    )["ARN"]
    role = iam.create_role(RoleName=f"{prefix}-orthanc"[:64], AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    pg = cluster.renew(master_pw)
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    (etc / "rds-ca.pem").write_text(ca.cert.read_text())
    values = HostValues(
        region="us-east-1",
        bucket="orthweb-dicom-test",
        admin_secret_arn=arns["admin"],
        tls_secret_arn=arns["tls"],
        ca_secret_arn=arns["ca"],
        ca_cert_secret_arn=arns["ca_cert"],
        users_secret_arn=arns["users"],
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
    s.emulator_endpoint = emulator.endpoint
    s.program = host_program()

    def bootstrap(step: str = "secrets", ok: bool = True, **extra: str) -> str:
        proc = run_bootstrap(s.program, step, {**s.env, **extra})
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
        """From now on every program run records its arguments and environment, the host's program
        itself included."""
        log = tmp_path / "calls.log"
        _recorder(tmp_path / "recbin", log, s.env["PATH"])
        s.env = {**s.env, "PATH": f"{tmp_path / 'recbin'}:{s.env['PATH']}"}
        s.program = tmp_path / "recbin" / "orthweb-bootstrap"
        _record_wrapper(s.program, str(host_program()), log)
        return log

    s.bootstrap, s.secret, s.versions, s.connect = bootstrap, secret, versions, connect_with_runtime_uri
    s.set_env, s.recording = set_env, recording
    yield s


def secret_values(site) -> list[str]:
    """Every secret value the run handled: passwords, private keys (each line), role credentials."""
    admin, ca, tls = site.secret("admin"), site.secret("ca"), site.secret("tls")
    values = [admin["password"], admin["db_password"], site.master_pw]
    for pem in (ca["ca_key"], tls["key"]):
        values += [line for line in pem.splitlines() if len(line) > 40]
    creds = (site.run / "aws" / "credentials").read_text()
    values += re.findall(r"^aws_(?:secret_access_key|session_token) = (\S+)$", creds, re.M)
    return values
