"""The host's program on its failure paths, run for real (tests/bootstrap/conftest.py): no secret in
any program's arguments or environment (a recording PATH), no secret-bearing file left when the
database, the AWS API or a write fails (a proxy in front of the emulator refuses a call the way IAM
does), the master secret read only when needed, and the boot's backoff after a failed attempt (the
Elastic IP never attached; a stand-in answers as instance metadata). The boot unit's retries
themselves run under real systemd in tests/test_systemd_boot.py."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from config import ROOT
from config.facts import (
    APP_DB_USER,
)
from tests.bootstrap.conftest import SITE_IP, secret_values
from tools.harness.awsproxy import AwsProxy, refuse
from tools.harness.hostsim import host_program
from tools.harness.imds import InstanceMetadata

pytestmark = pytest.mark.programs


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
    ran = {Path(entry.split("\0")[0]).name for entry in recorded.split("ARGV\0")[1:]}
    assert {"orthweb-bootstrap", "psql", "docker"} <= ran, f"the recorder saw the programs run: {ran}"
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


def test_a_refused_write_is_not_taken_for_another_host(site):
    """PutSecretValue refused (AccessDenied): the old bootstrap said "another host stored it first"."""
    with AwsProxy(site.emulator_endpoint, handler=refuse("PutSecretValue")) as proxy:
        log = site.bootstrap(ok=False, ORTHWEB_AWS_ENDPOINT=proxy.endpoint)
    assert "PutSecretValue" in proxy.operations()
    assert "another host stored it first" not in log
    assert "AccessDeniedException" in log and "cannot store secret" in log
    assert _leftovers(site, [site.master_pw]) == []


def test_the_master_secret_is_read_only_when_the_role_needs_it(site):
    site.bootstrap()
    with AwsProxy(site.emulator_endpoint) as proxy:
        site.bootstrap(ORTHWEB_AWS_ENDPOINT=proxy.endpoint)
        reads = [c.secret for c in proxy.calls if c.operation == "GetSecretValue"]
        assert reads and site.arns["db"] not in reads, "a run with a working role reads no master secret"
        site.pg.psql_superuser(f"ALTER ROLE {APP_DB_USER} PASSWORD NULL")
        site.bootstrap(ORTHWEB_AWS_ENDPOINT=proxy.endpoint)
        assert site.arns["db"] in [c.secret for c in proxy.calls if c.operation == "GetSecretValue"]


# -- booting: backoff after a failed attempt, cleaning up every time ------------------------------------


def test_a_failed_boot_waits_longer_before_the_next_attempt(site):
    with InstanceMetadata({"public-ipv4": "198.51.100.7"}) as metadata:
        env = {
            "ORTHWEB_IMDS_ENDPOINT": metadata.endpoint,
            "ORTHWEB_EIP_ATTEMPTS": "1",
            "ORTHWEB_BOOT_STEPS": "network",
            "ORTHWEB_BACKOFF_SLEEP": "0",
        }
        first = site.bootstrap("boot", ok=False, **env)
        second = site.bootstrap("boot", ok=False, **env)
        assert "Elastic IP 203.0.113.10 was not attached" in first
        assert "boot attempt 2: waiting 15s first" in second
        metadata.answers["public-ipv4"] = SITE_IP  # Terraform attaches the Elastic IP
        third = site.bootstrap("boot", **env)
    assert "boot attempt 3: waiting 30s first" in third and "Elastic IP 203.0.113.10 attached" in third
    assert not (site.run / "boot-attempts").exists(), "a successful boot resets the backoff"
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
        [str(host_program()), "secrets"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "ORTHWEB_ETC": str(tmp_path), "ORTHWEB_RUN": str(tmp_path / "r")},
    )
    assert proc.returncode == 1
    assert f"missing {tmp_path}/site.env" in proc.stdout


def test_unknown_step_is_refused(site):
    proc = subprocess.run([str(site.program), "deploy"], env=site.env, capture_output=True, text=True)
    assert proc.returncode == 2 and "usage: orthweb-bootstrap [boot|secrets|refresh|egress]" in proc.stdout


def test_unknown_boot_step_is_refused_naming_the_setting(site):
    log = site.bootstrap("boot", ok=False, ORTHWEB_BOOT_STEPS="network deploy")
    assert "ORTHWEB_BOOT_STEPS: unknown step(s) deploy; allowed: network packages" in log
