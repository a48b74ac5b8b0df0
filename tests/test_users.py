"""`make user` run for real against the AWS API emulator: add (the password printed once, stored
in the users secret), list (never a password), disable, enable, reset, remove; bad arguments exit 2
naming the field and the allowed values, and change nothing. Its effect on a running site is
tests/test_e2e_users.py."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from config.facts import USER_ROLES, USERS_SECRET
from tools.harness.emulator import Emulator
from tools.ops import users

pytestmark = pytest.mark.programs
REGION = "us-east-1"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with Emulator(tmp_path_factory.mktemp("emulator"), region=REGION) as emu:
        yield emu


@pytest.fixture
def site(emulator, monkeypatch):
    for key, value in emulator.client_env().items():
        monkeypatch.setenv(key, value)
    name = "s" + uuid.uuid4().hex[:12]
    sm = boto3.client("secretsmanager", **emulator.boto_kwargs())
    sm.create_secret(Name=f"{name}/{USERS_SECRET}")  # as Terraform creates it: no value

    def command(*args: str) -> int:
        return users.main(["--site", name, "--region", REGION, "--endpoint-url", emulator.endpoint, *args])

    def stored() -> dict:
        return json.loads(sm.get_secret_value(SecretId=f"{name}/{USERS_SECRET}")["SecretString"])["users"]

    def versions() -> int:
        return len(sm.list_secret_version_ids(SecretId=f"{name}/{USERS_SECRET}")["Versions"])

    return command, stored, versions


def test_the_life_of_a_user(site, capsys):
    command, stored, _ = site
    assert command("list") == 0 and "no named users yet" in capsys.readouterr().out
    assert command("add", "alice", "--role", "viewer") == 0
    out = capsys.readouterr().out
    password = out.splitlines()[0].rsplit(": ", 1)[1]
    assert len(password) >= 32 and stored()["alice"] == {**stored()["alice"], "role": "viewer", "password": password}
    assert stored()["alice"]["enabled"] is True
    assert command("list", "--json") == 0
    listed = capsys.readouterr().out
    assert json.loads(listed)["alice"]["role"] == "viewer" and password not in listed
    assert command("disable", "alice") == 0 and stored()["alice"]["enabled"] is False
    assert command("enable", "alice") == 0 and stored()["alice"]["enabled"] is True
    assert command("reset", "alice") == 0
    new = capsys.readouterr().out.splitlines()[-2].rsplit(": ", 1)[1]
    assert new != password and stored()["alice"]["password"] == new
    assert command("add", "bob", "--role", "researcher") == 0 and set(stored()) == {"alice", "bob"}
    assert command("remove", "alice") == 0 and set(stored()) == {"bob"}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ("add", "carol", "--role", "superuser"),
            "--role: 'superuser' is not allowed; allowed: " + ", ".join(USER_ROLES),
        ),
        (("add", "admin", "--role", "viewer"), "NAME: 'admin' is not allowed"),
        (("add", "Carol!", "--role", "viewer"), "NAME: 'Carol!' is not allowed"),
        (("disable", "nobody"), "NAME: 'nobody' is not allowed; allowed: a user of this site (bob)"),
        (("add", "bob", "--role", "viewer"), "NAME: 'bob' is not allowed; allowed: a name not yet taken"),
    ],
)
def test_bad_arguments_exit_2_naming_the_field_and_change_nothing(site, capsys, args, words):
    command, _, versions = site
    assert command("add", "bob", "--role", "researcher") == 0
    before = versions()
    with pytest.raises(SystemExit) as exited:
        command(*args)
    assert exited.value.code == 2 and words in capsys.readouterr().err
    assert versions() == before
