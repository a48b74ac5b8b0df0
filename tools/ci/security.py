"""Security gate: checkov (pinned, own virtualenv, offline) with Orthweb's custom policies on the
synthesized default, prod and scaled stacks and on the plan of the default stack, and the AWS
requirement checks (tools/ci/aws_rules.py) on the same stacks.

``python -m tools.ci.security`` (``make security``) prints one line per scan and exits 1 on any
failed check; ``--install`` only installs checkov (``make test-deps`` runs it beside the other installs).
The scans and the custom checks' own tests share ``run_checkov``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import ROOT
from tools.ci import aws_rules
from tools.profiles import PROD, SCALED

CONFIG = ROOT / "security" / "checkov.yaml"
REQUIREMENTS = ROOT / "security" / "requirements.txt"
VENV = ROOT / "build" / "checkov-venv"
WORK = ROOT / "build" / "security"
# The public reference deployment we compare with (checkov 3.3.30; 66 resources): passed, failed, inline skips.
REFERENCE = (159, 12, 8)


def checkov_bin() -> Path:
    """checkov from its own virtualenv (it would downgrade packages cdktf needs), installed on first use."""
    exe = VENV / "bin" / "checkov"
    stamp = VENV / ".requirements"
    if not exe.exists() or not stamp.exists() or stamp.read_text() != REQUIREMENTS.read_text():
        venv.create(VENV, with_pip=True, clear=True)
        log = VENV / "pip-install.log"
        with open(log, "w") as out:
            subprocess.run(
                [str(VENV / "bin" / "pip"), "install", "-r", str(REQUIREMENTS)],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        stamp.write_text(REQUIREMENTS.read_text())
    return exe


def skipped_checks() -> list[str]:
    return re.findall(r"^\s*-\s*(CKV\S+)\s*$", CONFIG.read_text(), re.M)


@dataclass
class Scan:
    label: str
    passed: int
    failed: list[dict[str, Any]]

    def line(self) -> str:
        status = "ok" if not self.failed else "FAILED"
        text = (
            f"{self.label}: {self.passed} passed, {len(self.failed)} failed, {len(skipped_checks())} skipped ({status})"
        )
        for f in self.failed:
            text += f"\n    {f['check_id']} {f['check_name']} -> {f['resource']}"
        return text


def run_checkov(target: Path, label: str, framework: str = "terraform_json", checks: str | None = None) -> Scan:
    args = [str(checkov_bin()), "--config-file", str(CONFIG), "--framework", framework, "-o", "json"]
    args += ["-f", str(target)] if target.is_file() else ["-d", str(target)]
    if checks:
        args += ["--check", checks]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    if proc.returncode not in (0, 1) or not proc.stdout.strip().startswith(("{", "[")):
        raise RuntimeError(f"checkov did not run ({proc.returncode}): {proc.stderr[-2000:]}")
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
    failed = [f for r in reports for f in r.get("results", {}).get("failed_checks", [])]
    return Scan(label, passed, failed)


def synth(profile: dict[str, Any], outdir: Path) -> Path:
    from config.inputs import OrthwebConfig
    from main import build_app

    config = OrthwebConfig(**profile).validate()
    outdir.mkdir(parents=True, exist_ok=True)
    build_app(config, str(outdir)).synth()
    return outdir / "stacks" / config.name


def plan_json(outdir: Path) -> Path:
    """``terraform show -json`` of the default stack's plan, its data sources answered by the AWS API
    emulator: the stack is the real one (target aws); a Terraform override file next to it points
    the provider at the emulator for the plan only."""
    from stacks.emulator import provider_settings
    from tools.harness.emulator import Emulator
    from tools.ops.terraform import Terraform

    with Emulator(outdir / "emulator") as emulator:
        stack = synth({}, outdir / "cdktf.out")
        override = {"provider": {"aws": [provider_settings(emulator.endpoint)]}}
        (stack / "emulator_override.tf.json").write_text(json.dumps(override))
        tf = Terraform.offline(stack, outdir / "terraform-cli", extra_env={"TF_DATA_DIR": str(outdir / "tfdata")})
        tf.init()
        plan = tf.plan_json(str(outdir / "plan.tfplan"))
    path = outdir / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--install"]:  # make test-deps: checkov's virtualenv beside the other installs
        print(f"[security] checkov: {checkov_bin()}")
        return 0
    if args:
        print("usage: python -m tools.ci.security [--install]", file=sys.stderr)
        return 2
    stacks = {
        "default": synth({}, WORK / "default"),
        "prod": synth(PROD, WORK / "prod"),
        "scaled": synth(SCALED, WORK / "scaled"),
    }
    scans = [run_checkov(stack, f"{label} stack (terraform_json)") for label, stack in stacks.items()]
    scans.append(run_checkov(plan_json(WORK / "plan"), "default plan (terraform_plan)", framework="terraform_plan"))
    for scan in scans:
        print(f"[security] {scan.line()}")
    print(f"[security] public reference: {REFERENCE[0]} passed, {REFERENCE[1]} failed, {REFERENCE[2]} skipped")
    # What AWS requires that the emulator and checkov do not see (tools/ci/aws_rules.py).
    found = [
        f"{label}: {line}"
        for label, stack in stacks.items()
        for line in aws_rules.problems(json.loads((stack / "cdk.tf.json").read_text()))
    ]
    print(f"[security] AWS requirement checks ({len(aws_rules.RULES)} rules): {len(found)} problems")
    for line in found:
        print(f"[security]   {line}")
    return 1 if any(scan.failed for scan in scans) or found else 0


if __name__ == "__main__":
    sys.exit(main())
