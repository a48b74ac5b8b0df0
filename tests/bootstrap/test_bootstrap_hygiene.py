"""The host bootstrap's failure paths, run for real (tests/bootstrap_site.py): no secret in any
program's arguments or environment (a recording PATH), no secret-bearing file left when the
database, the AWS API or a write fails, the master secret read only when needed, and the boot unit
retrying with backoff after an injected failure (the Elastic IP never attached)."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from config import ROOT
from config.facts import (
    APP_DB_USER,
)
from tests.bootstrap.conftest import BOOTSTRAP, SITE_IP, secret_values

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
