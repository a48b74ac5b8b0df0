"""The CDKTF CLI path itself, as users run it: ``make synth`` through ``cdktf synth`` gives the same
stack as ``main.py``, and ``make diff`` (``cdktf diff``) plans against the AWS API emulator offline
and shows the outputs users depend on."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from config import ROOT
from tests.conftest import synth_json
from tools.harness.emulator import Emulator

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


def test_cdktf_diff_against_the_emulator_plans_the_outputs(tmp_path):
    with Emulator(tmp_path / "emulator") as emulator:
        env = {"ORTHWEB_TARGET": "emulator", "ORTHWEB_EMULATOR_ENDPOINT": emulator.endpoint}
        proc = make("diff", f"--skip-provider-lock --output {tmp_path / 'out'}", env)
    text = ANSI.sub("", proc.stdout + proc.stderr)
    assert proc.returncode == 0, text[-4000:]
    plan = re.search(r"Plan: (\d+) to add, 0 to change, 0 to destroy", text)
    assert plan and int(plan.group(1)) > 50, text[-3000:]
    outputs = text.split("Changes to Outputs:", 1)[1]
    planned = set(re.findall(r"^\s*\+\s*(\w+)\s*=", outputs, re.M))
    assert {"hostinfo", "dbinfo", "s3bucket"} <= planned, planned
