"""The CDKTF CLI path itself, as users run it: ``make synth`` through ``cdktf synth`` gives the same
stack as ``main.py``, and a plain ``make diff`` (``cdktf diff``) plans against the AWS API emulator
offline and shows the outputs users depend on."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from config import ROOT
from tests.conftest import synth_json
from tools.harness.emulator import Emulator
from tools.ops.terraform import SKIP_LOCK_COMMANDS

pytestmark = pytest.mark.cli
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def make(target: str, flags: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", target, f"CDKTF_FLAGS={flags}"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cdktf_synth_matches_main(tmp_path):
    from config.inputs import OrthwebConfig

    proc = make("cli-synth", f"--output {tmp_path / 'cli'}", {})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    direct = synth_json(OrthwebConfig(), tmp_path / "direct")
    assert (tmp_path / "cli" / "stacks" / "orthweb" / "cdk.tf.json").read_text() == (
        tmp_path / "direct" / "stacks" / "orthweb" / "cdk.tf.json"
    ).read_text()
    assert direct["output"]


def test_plain_make_diff_against_the_emulator_plans_the_outputs_offline(tmp_path):
    """The README's ``make diff`` with nothing added: the provider comes from the filesystem mirror
    here, so the target itself brings the offline CLI configuration and ``--skip-provider-lock``.
    Only the environment differs from a user's: the emulator target, and ``CDKTF_OUTPUT`` (the CLI's
    own variable for ``--output``) keeps the emulator stack out of the project's cdktf.out."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CLI_CONFIG_FILE", "CDKTF_FLAGS", "MAKEFLAGS")}
    with Emulator(tmp_path / "emulator") as emulator:
        env.update(
            ORTHWEB_TARGET="emulator", ORTHWEB_EMULATOR_ENDPOINT=emulator.endpoint, CDKTF_OUTPUT=str(tmp_path / "out")
        )
        proc = subprocess.run(
            ["make", "--no-print-directory", "diff"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
    text = ANSI.sub("", proc.stdout + proc.stderr)
    assert proc.returncode == 0, text[-4000:]
    assert "npx cdktf diff --skip-provider-lock" in text, text[:2000]
    assert (tmp_path / "out" / "stacks" / "orthweb" / "cdk.tf.json").is_file()
    plan = re.search(r"Plan: (\d+) to add, 0 to change, 0 to destroy", text)
    assert plan and int(plan.group(1)) > 50, text[-3000:]
    outputs = text.split("Changes to Outputs:", 1)[1]
    planned = set(re.findall(r"^\s*\+\s*(\w+)\s*=", outputs, re.M))
    assert {"hostinfo", "dbinfo", "s3bucket"} <= planned, planned


def test_skip_provider_lock_goes_to_exactly_the_cdktf_commands_that_accept_it():
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20", "CHECKPOINT_DISABLE": "1"}
    accepting = set()
    for command in ("synth", "diff", "deploy", "destroy", "output", "get", "list"):
        proc = subprocess.run(
            ["npx", "cdktf", command, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        if "--skip-provider-lock" in proc.stdout:
            accepting.add(command)
    assert accepting == SKIP_LOCK_COMMANDS
