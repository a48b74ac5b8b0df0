"""Operator commands on a laptop without AWS credentials: a clear line naming what is missing and
exit 2, before any AWS call (not botocore's "Unable to locate credentials" at the first request)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from config import ROOT
from tools.ops.site import NO_CREDENTIALS, NoCredentials, require_credentials


def _without_credentials(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {
        **env,
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def _run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, env=_without_credentials(tmp_path)
    )


@pytest.mark.parametrize("command", ["modalities", "users"])
def test_modality_cert_and_user_without_credentials_exit_2_naming_them(tmp_path, command):
    proc = _run(tmp_path, f"tools.ops.{command}", "--site", "orthweb", "--region", "us-east-1", "list")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"{command}: error: {NO_CREDENTIALS}"
    assert "Unable to locate credentials" not in proc.stderr + proc.stdout and proc.stdout == ""


def test_validate_without_credentials_exits_2_naming_them(tmp_path):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(
        json.dumps(
            {
                "site_url": {"value": "https://pacs.example.org"},
                "admin_secret": {"value": "arn:aws:secretsmanager:us-east-1:111122223333:secret:orthweb/admin-AbCdEf"},
                "ca_secret": {"value": "arn:aws:secretsmanager:us-east-1:111122223333:secret:orthweb/site-ca-AbCdEf"},
                "region": {"value": "us-east-1"},
            }
        )
    )
    proc = _run(tmp_path, "tools.ops.validate", "--outputs", str(outputs))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"validate: error: {NO_CREDENTIALS}"
    assert "Unable to locate credentials" not in proc.stdout + proc.stderr


def test_credentials_in_the_environment_or_the_emulator_are_enough(tmp_path, monkeypatch):
    for name, value in _without_credentials(tmp_path).items():
        monkeypatch.setenv(name, value)
    for name in [k for k in os.environ if k.startswith("AWS_ACCESS") or k.startswith("AWS_SECRET")]:
        monkeypatch.delenv(name)
    with pytest.raises(NoCredentials):
        require_credentials()
    require_credentials("http://127.0.0.1:4566")  # the emulator takes its placeholder keys
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE12")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-not-a-secret")
    require_credentials()


def test_validate_without_a_site_to_read_exits_2_saying_what_to_run_first(tmp_path):
    """No local site up, or outputs of an older stack: what the operator must run first, exit 2
    (a FAIL line and exit 1 stay for a site that does not answer)."""
    env = {**_without_credentials(tmp_path), "ORTHWEB_LOCALSITE_DIR": str(tmp_path / "none")}
    proc = subprocess.run(
        [sys.executable, "-m", "tools.ops.validate", "--local"], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "validate: error: no local site is up: run make local-up first"
    older = tmp_path / "outputs.json"
    older.write_text(json.dumps({"site_url": {"value": "https://pacs.example.org"}}))
    proc = _run(tmp_path, "tools.ops.validate", "--outputs", str(older))
    assert proc.returncode == 2 and "deploy this version of the stack first" in proc.stderr, proc.stdout + proc.stderr


def test_local_refuses_a_recorded_emulator_that_is_not_on_loopback(tmp_path):
    """--local sends the emulator's placeholder keys where the local site's record says: never
    anywhere but loopback, whatever the file holds."""
    (tmp_path / "site.json").write_text(
        json.dumps({"name": "orthweb", "region": "us-east-1", "emulator": "https://secretsmanager.example.org"})
    )
    env = {**_without_credentials(tmp_path), "ORTHWEB_LOCALSITE_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "tools.ops.modalities", "--local", "list"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 2 and "not an emulator on loopback" in proc.stderr, proc.stderr
