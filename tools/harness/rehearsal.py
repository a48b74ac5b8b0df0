"""Deploy rehearsal: the real Terraform workflow against the AWS API emulator, end to end.

``python -m tools.harness.rehearsal`` (or ``make rehearsal``): start the emulator, synthesize the stack for
it, ``terraform init/apply``, print the outputs, check what was created through the AWS APIs,
check the state holds no secret value and that a second plan is empty, run the host bootstrap
against the deployment, ``terraform destroy``, stop the emulator. One line per phase with its
time; a failure names the phase and keeps the logs in ``build/rehearsal``.
"""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config import ROOT

WORKDIR = ROOT / "build" / "rehearsal"


class PhaseError(RuntimeError):
    pass


# What the AWS API emulator (moto) does not store or returns in another form, so the provider sees
# a difference where AWS would show none. Everything else in a second plan is a real perpetual diff.
EMULATOR_GAPS: dict[str, set[str]] = {
    "aws_db_instance": {
        "performance_insights_enabled",
        "performance_insights_kms_key_id",
        "performance_insights_retention_period",
    },
    "aws_db_parameter_group": {"parameter"},  # DescribeDBParameters does not return user parameters by source
    "aws_s3_bucket_notification": {"eventbridge"},
    "aws_vpc_security_group_ingress_rule": {"description", "referenced_security_group_id"},
    "aws_vpc_security_group_egress_rule": {"description", "referenced_security_group_id"},
}


def _differs(key: str, before: dict[str, Any], after: dict[str, Any], unknown: dict[str, Any]) -> bool:
    if unknown.get(key):
        return False
    was, will = before.get(key), after.get(key)
    if key in ("tags", "tags_all"):  # absent and empty tags are the same to AWS
        was, will = was or {}, will or {}
    return bool(was != will)


def classify_second_plan(plan: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Split the changes of a plan made right after apply into real diffs and emulator gaps.

    A change is real when a known attribute value differs and the attribute is not a listed gap.
    Changes made only of values unknown until apply are consequences of other changes; they are
    accepted only when every known difference in the plan is a listed gap.
    """
    real: list[str] = []
    gaps: list[str] = []
    for rc in plan.get("resource_changes", []):
        change = rc["change"]
        if rc.get("mode") != "managed" or change["actions"] == ["no-op"]:
            continue
        before, after = change.get("before") or {}, change.get("after") or {}
        unknown = change.get("after_unknown") or {}
        known_diffs = {k for k in set(before) | set(after) if _differs(k, before, after, unknown)}
        if "delete" in change["actions"] and "create" in change["actions"]:
            # A replacement: only the attributes that force it matter (the rest is the new object's defaults).
            known_diffs &= {path[0] for path in change.get("replace_paths", []) if path}
        allowed = EMULATOR_GAPS.get(rc["type"], set())
        unexplained = sorted(known_diffs - allowed)
        label = f"{rc['address']} ({'/'.join(change['actions'])})"
        if unexplained:
            real.append(f"{label}: {', '.join(unexplained)}")
        elif known_diffs:
            gaps.append(f"{label}: {', '.join(sorted(known_diffs))}")
        else:
            gaps.append(f"{label}: follows from the above")
    return real, gaps


@dataclass
class Rehearsal:
    workdir: Path = WORKDIR
    name: str = "orthweb"
    region: str = "us-east-1"
    log: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    def phase(self, label: str, fn: Callable[[], Any]) -> Any:
        start = time.monotonic()
        try:
            result = fn()
        except Exception as exc:
            self.log(f"[rehearsal] {label}: FAILED after {time.monotonic() - start:.1f}s: {exc}")
            self.log(f"[rehearsal] logs kept in {self.workdir}")
            raise PhaseError(f"{label}: {exc}") from exc
        self.timings[label] = time.monotonic() - start
        self.log(f"[rehearsal] {label}: ok ({self.timings[label]:.1f}s)")
        return result

    # -- phases --------------------------------------------------------------------------------
    def start_emulator(self) -> None:
        from tools.harness.emulator import Emulator

        self.emulator = Emulator(self.workdir / "logs", region=self.region).start()

    def synth(self, **overrides: Any) -> None:
        from config.inputs import OrthwebConfig
        from main import build_app

        config = OrthwebConfig(
            name=self.name, region=self.region, target="emulator", emulator_endpoint=self.emulator.endpoint, **overrides
        ).validate()
        out = self.workdir / "cdktf.out"
        shutil.rmtree(out, ignore_errors=True)
        self.state_file = self.workdir / "terraform.tfstate"
        build_app(config, str(out), state_path=str(self.state_file)).synth()
        self.stack_dir = out / "stacks" / self.name

    def init(self) -> None:
        from tools.harness.terraform import Terraform

        self.tf = Terraform.offline(
            self.stack_dir,
            self.workdir / "terraform-cli",
            extra_env={"TF_DATA_DIR": str(self.workdir / "tfdata")},
            log_dir=self.workdir / "logs",
        )
        self.tf.init()

    def apply(self) -> None:
        self.tf.run("apply", "-auto-approve", "-no-color", "-lock=false", timeout=1200)
        out = self.tf.run("output", "-json").stdout
        self.outputs = {k: v["value"] for k, v in json.loads(out).items()}
        self.state = json.loads(self.state_file.read_text())
        for key in ("hostinfo", "dbinfo", "s3bucket", "site_url", "dicom_endpoint"):
            self.log(f"    {key} = {self.outputs.get(key)}")

    def second_plan(self) -> list[str]:
        """Plan again right after apply: any change that is not an emulator gap is a perpetual diff."""
        self.tf.run("plan", "-no-color", "-lock=false", "-out=second.tfplan", timeout=600)
        plan = json.loads(self.tf.run("show", "-json", "second.tfplan").stdout)
        real, gaps = classify_second_plan(plan)
        if real:
            raise PhaseError("a plan right after apply is not empty (perpetual diff): " + "; ".join(real))
        return gaps

    def bootstrap_meets_deployment(self) -> list[str]:
        """Run the host bootstrap with the user data Terraform deployed, against the deployed secrets.

        The emulator's RDS has no PostgreSQL behind it: a local TLS-only PostgreSQL 15 stands in for
        it, started with the master credentials RDS generated (read from the RDS-managed secret).
        """
        import boto3
        import yaml

        from tools.harness.hostsim import bootstrap_env, run_bootstrap
        from tools.harness.localpg import LocalPostgres
        from tools.harness.pki import make_ca, make_server_cert

        ec2 = boto3.client("ec2", **self.emulator.boto_kwargs())
        sm = boto3.client("secretsmanager", **self.emulator.boto_kwargs())
        lt_id = next(
            r["instances"][0]["attributes"]["id"] for r in self.state["resources"] if r["type"] == "aws_launch_template"
        )
        data = ec2.describe_launch_template_versions(LaunchTemplateId=lt_id, Versions=["$Latest"])[
            "LaunchTemplateVersions"
        ][0]["LaunchTemplateData"]["UserData"]
        cloud_config = yaml.safe_load(gzip.decompress(base64.b64decode(data)))
        files = {f["path"]: f["content"] for f in cloud_config["write_files"]}
        master = json.loads(sm.get_secret_value(SecretId=self.outputs["db_secret_arn"])["SecretString"])
        host = self.workdir / "host"
        etc, run = host / "etc", host / "run"
        etc.mkdir(parents=True, exist_ok=True)
        ca = make_ca(host / "pki", "Stand-in RDS CA")
        with LocalPostgres(
            make_server_cert(host / "pki", ca, "db"), master["username"], master["password"], "orthanc"
        ) as pg:
            (etc / "rds-ca.pem").write_text(ca.cert.read_text())
            (etc / "site.env").write_text(
                files["/etc/orthweb/site.env"] + f"DB_HOST='localhost'\nDB_PORT='{pg.port}'\n"
            )
            (host / "bootstrap.sh").write_text(files["/usr/local/sbin/orthweb-bootstrap"])
            env = bootstrap_env(etc, run, self.emulator)
            logs = []
            for attempt in (1, 2):
                log_file = self.workdir / "logs" / f"bootstrap-{attempt}.log"
                proc = run_bootstrap(host / "bootstrap.sh", "secrets", env, log_file=log_file)
                if proc.returncode != 0:
                    raise PhaseError(f"bootstrap run {attempt} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
                logs.append(proc.stdout)
        if "runtime secret files: unchanged" not in logs[1] or "created" in logs[1]:
            raise PhaseError("the second bootstrap run changed something")
        return ["bootstrap: app secrets created in the deployed secrets, database role created, second run unchanged"]

    def unprotect(self) -> None:
        """What a user does before destroying: switch deletion protection off and apply."""
        self.synth(db_deletion_protection=False)
        self.tf.init()
        # Only the database carries the flag. A full apply here would also replace the host, because
        # of the emulator gaps (EMULATOR_GAPS), and add two minutes that rehearse nothing.
        self.tf.run(
            "apply", "-auto-approve", "-no-color", "-lock=false", "-target=aws_db_instance.database", timeout=1200
        )

    def destroy(self) -> None:
        self.tf.run("destroy", "-auto-approve", "-no-color", "-lock=false", timeout=1200)
        left = json.loads(self.state_file.read_text()).get("resources", [])
        managed = [r for r in left if r.get("mode") == "managed"]
        if managed:
            raise PhaseError(f"{len(managed)} resources left after destroy")

    def stop_emulator(self) -> None:
        if getattr(self, "emulator", None):
            self.emulator.stop()

    # -- driver --------------------------------------------------------------------------------
    def up(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        self.phase("start emulator", self.start_emulator)
        self.phase("synth", self.synth)
        self.phase("terraform init", self.init)
        self.phase("terraform apply", self.apply)

    def down(self) -> None:
        try:
            if getattr(self, "tf", None):
                self.phase("switch off deletion protection (apply)", self.unprotect)
                self.phase("terraform destroy", self.destroy)
        finally:
            self.phase("stop emulator", self.stop_emulator)


def main() -> int:
    from tools.harness.checks import check_state, run_post_deploy_checks

    rehearsal = Rehearsal()
    failed = False
    try:
        rehearsal.up()
        report = rehearsal.phase("post-deploy checks", lambda: run_post_deploy_checks(rehearsal))
        report += rehearsal.phase("host bootstrap against the deployment", rehearsal.bootstrap_meets_deployment)
        report.append(rehearsal.phase("state holds no secret value", lambda: check_state(rehearsal)))
        for line in report:
            print(f"    {line}")
        gaps = rehearsal.phase("terraform plan again (empty but for emulator gaps)", rehearsal.second_plan)
        for line in gaps:
            print(f"    emulator gap: {line}")
    except PhaseError:
        failed = True
    finally:
        try:
            rehearsal.down()
        except PhaseError:
            failed = True
    total = sum(rehearsal.timings.values())
    print(f"[rehearsal] {'FAILED' if failed else 'passed'} in {total:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
