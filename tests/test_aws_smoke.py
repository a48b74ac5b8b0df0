"""make aws-smoke (tools/ops/aws_smoke.py) is for a user with an account and is never run in CI; what
runs here is what it does before it builds anything: without usable credentials, with a bad address
or a bad name it stops with exit 2 and a message naming what to fix, and its site is configured to be
destroyable and open to the one address given."""

from __future__ import annotations

import pytest

from config import ROOT
from config.inputs import load_config
from tools.harness.emulator import Emulator
from tools.ops import aws_smoke


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


def test_without_credentials_it_stops_before_building_anything(no_credentials, capsys):
    assert aws_smoke.main(["--cidr", "203.0.113.7/32"]) == 2
    err = capsys.readouterr().err
    assert "no AWS credentials" in err and "AWS_PROFILE" in err


def test_a_bad_address_or_name_is_refused_with_the_field_named(no_credentials, tmp_path, monkeypatch, capsys):
    with Emulator(tmp_path / "emulator") as emulator:
        for key, value in emulator.client_env().items():
            monkeypatch.setenv(key, value)
        assert aws_smoke.main(["--cidr", "203.0.113.700/32"]) == 2
        assert "--cidr" in capsys.readouterr().err
        assert aws_smoke.main(["--cidr", "203.0.113.7/32", "--name", "Not_A_Name"]) == 2
        assert "name: 'Not_A_Name' is not allowed; allowed: 3-20 chars" in capsys.readouterr().err


def test_the_smoke_site_is_destroyable_and_open_to_one_address():
    config = load_config(ROOT, aws_smoke.smoke_environment("orthweb-smoke", "203.0.113.7/32", {}))
    assert config.name == "orthweb-smoke"
    assert config.web_client_cidrs == config.dicom_client_cidrs == ("203.0.113.7/32",)
    assert config.db_deletion_protection is False and config.allow_data_destroy is True
