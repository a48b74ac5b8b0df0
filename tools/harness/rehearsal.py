"""Deploy rehearsal: the real Terraform workflow against the AWS API emulator, end to end.

``python -m tools.harness.rehearsal`` (or ``make rehearsal``): start the emulator, synthesize the stack for
it, ``terraform init/apply``, print the outputs, check what was created through the AWS APIs,
check the state holds no secret value and that a second plan is empty, run the host bootstrap
against the deployment, ``terraform destroy``, stop the emulator. One line per phase with its
time; a failure names the phase and keeps the logs in ``build/rehearsal``.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config import ROOT

WORKDIR = ROOT / "build" / "rehearsal"


class PhaseError(RuntimeError):
    pass


# The resource types whose settings decide what a destroy deletes (allow_data_destroy, deletion protection).
# (The DICOM bucket's policy too: with allow_data_destroy it no longer refuses Terraform the deletes.)
UNPROTECT_TYPES = ("aws_db_instance", "aws_lb", "aws_s3_bucket", "aws_s3_bucket_policy", "aws_secretsmanager_secret")


# What the AWS API emulator (moto) does not store or returns in another form, so the provider sees
# a difference where AWS would show none. Everything else in a second plan is a real perpetual diff.
EMULATOR_GAPS: dict[str, set[str]] = {
    "aws_db_instance": {
        "performance_insights_enabled",
        "performance_insights_kms_key_id",
        "performance_insights_retention_period",
    },
    "aws_autoscaling_policy": {"enabled", "predictive_scaling_configuration"},
    # The emulator answers with the account's default Auto Scaling role, not the one the group was given.
    "aws_autoscaling_group": {"service_linked_role_arn"},
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


def _study_attempts(who: str, s3: Any, bucket: str, key: str) -> dict[str, str]:
    """List, read, write and delete a study as ``who``: "ok" or the error code of each."""
    from botocore.exceptions import ClientError

    calls = {
        "lists": lambda: s3.list_objects_v2(Bucket=bucket, Prefix="access-check/"),
        "reads": lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read(),
        "writes": lambda: s3.put_object(Bucket=bucket, Key=f"{key}.{who}", Body=b"x"),
        "deletes": lambda: s3.delete_object(Bucket=bucket, Key=key),
    }
    found = {}
    for verb, call in calls.items():
        try:
            call()
            found[f"{who} {verb}"] = "ok"
        except ClientError as exc:
            found[f"{who} {verb}"] = str(exc.response["Error"]["Code"])
    return found


@dataclass
class Rehearsal:
    workdir: Path = WORKDIR
    name: str = "orthweb"
    region: str = "us-east-1"
    # Inputs on top of the defaults: tools.profiles.SCALED rehearses the scaled profile.
    profile: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    destroyed: bool = field(default=False, init=False)

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

        # The apply attaches AWS managed policies (RDS monitoring, backup).
        self.emulator = Emulator(self.workdir / "logs", region=self.region, managed_policies=True).start()

    def synth(self, **overrides: Any) -> None:
        from config.inputs import OrthwebConfig
        from main import build_app

        config = OrthwebConfig(
            **{
                **self.profile,
                **overrides,
                "name": self.name,
                "region": self.region,
                "target": "emulator",
                "emulator_endpoint": self.emulator.endpoint,
            }
        ).validate()
        out = self.workdir / "cdktf.out"
        shutil.rmtree(out, ignore_errors=True)
        self.state_file = self.workdir / "terraform.tfstate"
        build_app(config, str(out), state_path=str(self.state_file)).synth()
        self.stack_dir = out / "stacks" / self.name

    def init(self) -> None:
        from tools.ops.terraform import Terraform

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
        """Boot a host from what Terraform deployed: the user data from the launch template, the
        real ``orthweb-fetch`` getting the boot bundle from the config bucket (checked against the
        SHA-256 the user data names), then the bundle's bootstrap against the deployed secrets.

        The emulator's RDS has no PostgreSQL behind it: a local TLS-only PostgreSQL 15 stands in for
        it, started with the master credentials RDS generated (read from the RDS-managed secret), and
        its CA replaces the bundle's real RDS CAs.
        """
        import subprocess

        import boto3
        import yaml

        from tools.harness.hostsim import bootstrap_env
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
        root, run = host / "root", host / "run"
        etc = root / "etc" / "orthweb"
        etc.mkdir(parents=True, exist_ok=True)
        (host / "orthweb-fetch").write_text(files["/usr/local/sbin/orthweb-fetch"])
        ca = make_ca(host / "pki", "Stand-in RDS CA")
        with LocalPostgres(
            make_server_cert(host / "pki", ca, "db"), master["username"], master["password"], "orthanc"
        ) as pg:
            (etc / "site.env").write_text(
                files["/etc/orthweb/site.env"] + f"DB_HOST='localhost'\nDB_PORT='{pg.port}'\n"
            )
            # The host's calls are made as the host role, with the emulator checking every request
            # against the role's IAM policies: a missing permission fails here, not at the first boot.
            env = {
                **bootstrap_env(etc, run, self.emulator),
                **self.host_role_credentials(),
                "ORTHWEB_ROOT": str(root),
                "ORTHWEB_BUNDLES": str(host / "bundles"),
            }
            self.host_env = env
            with self.emulator.iam_enforced():
                fetch = subprocess.run(["bash", str(host / "orthweb-fetch")], env=env, capture_output=True, text=True)
                (self.workdir / "logs" / "fetch.log").write_text(fetch.stdout + fetch.stderr)
                if fetch.returncode != 0 or "fetched and verified" not in fetch.stdout:
                    raise PhaseError(f"orthweb-fetch failed:\n{fetch.stdout[-2000:]}{fetch.stderr[-2000:]}")
                (etc / "rds-ca.pem").write_text(ca.cert.read_text())
                logs = []
                # The first boot's step, then the refresh the timer runs every 5 minutes.
                for attempt, step in ((1, "secrets"), (2, "refresh")):
                    proc = self.run_host(step, f"bootstrap-{attempt}")
                    if proc.returncode != 0:
                        raise PhaseError(f"bootstrap {step} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
                    logs.append(proc.stdout)
                bucket = self.orthanc_round_trip(run / "aws" / "credentials")
        if "runtime files: unchanged" not in logs[1] or "created" in logs[1]:
            raise PhaseError("the refresh right after the first boot changed something")
        orthanc = json.loads((etc / "orthanc.json").read_text())["AwsS3Storage"]
        if orthanc["BucketName"] != bucket:
            raise PhaseError(f"orthanc.json names bucket {orthanc['BucketName']}")
        return [
            "boot bundle: fetched from the config bucket as the host role, SHA-256 as the user data names, unpacked",
            "bootstrap as the host role (IAM enforced): secrets and site CA created in the deployed secrets,"
            " database role created, Orthanc's role assumed, orthanc.json written for the deployed bucket,"
            " refresh unchanged",
            "Orthanc's role (IAM enforced): an object written, listed, read and deleted in the DICOM bucket",
        ]

    def host_role_credentials(self) -> dict[str, str]:
        """Credentials of a session of the deployed host role, as EC2 hands them to the instance."""
        role = next(
            r["instances"][0]["attributes"]["arn"]
            for r in self.state["resources"]
            if r["type"] == "aws_iam_role" and r["instances"][0]["attributes"]["name"] == f"{self.name}-host"
        )
        return self.emulator.assume_role(role, "i-rehearsal")

    def run_host(self, step: str, label: str) -> Any:
        """One run of the deployed host program (``secrets``, ``refresh``) as the host role."""
        from tools.harness.hostsim import run_bootstrap

        program = self.workdir / "host" / "root" / "usr" / "local" / "sbin" / "orthweb-bootstrap"
        return run_bootstrap(program, step, self.host_env, log_file=self.workdir / "logs" / f"{label}.log")

    def orthanc_round_trip(self, credentials_file: Path) -> str:
        """What Orthanc's storage plugin does, with the credentials the host handed it: write, list,
        read and delete an object in the DICOM bucket (IAM enforced by the caller)."""
        import configparser

        import boto3

        bucket = self.outputs["s3bucket"].split(".")[0]
        profile = configparser.ConfigParser()
        profile.read_string(credentials_file.read_text())
        s3 = boto3.client(
            "s3",
            region_name=self.region,
            endpoint_url=self.emulator.endpoint,
            aws_access_key_id=profile["default"]["aws_access_key_id"],
            aws_secret_access_key=profile["default"]["aws_secret_access_key"],
            aws_session_token=profile["default"]["aws_session_token"],
        )
        key = "rehearsal/iam-check.dcm"
        s3.put_object(Bucket=bucket, Key=key, Body=b"DICM")
        listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="rehearsal/").get("Contents", [])]
        if listed != [key] or s3.get_object(Bucket=bucket, Key=key)["Body"].read() != b"DICM":
            raise PhaseError(f"Orthanc's role: the object written is not what is listed or read back ({listed})")
        s3.delete_object(Bucket=bucket, Key=key)
        return bucket

    def study_access(self, break_glass_role: str = "") -> dict[str, str]:
        """Who reads and writes a study in the deployed DICOM bucket, under IAM enforcement with its
        bucket policy judged (tools/harness/moto_server.py): an administrator whose IAM policy
        allows every action, and the break-glass role (assumed by that administrator) when given.
        Answers per attempt: "ok" or the error code."""
        import boto3

        bucket = self.outputs["s3bucket"].split(".")[0]
        key = "access-check/study.dcm"
        base = {"region_name": self.region, "endpoint_url": self.emulator.endpoint}
        boto3.client("s3", **self.emulator.boto_kwargs()).put_object(Bucket=bucket, Key=key, Body=b"DICM")
        iam = boto3.client("iam", **self.emulator.boto_kwargs())
        iam.create_user(UserName="cloud-admin")
        everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="cloud-admin", PolicyName="everything", PolicyDocument=json.dumps(everything))
        made = iam.create_access_key(UserName="cloud-admin")["AccessKey"]
        admin = {**base, "aws_access_key_id": made["AccessKeyId"], "aws_secret_access_key": made["SecretAccessKey"]}
        people = {"administrator": admin}
        if break_glass_role:
            trust = {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": iam.get_user(UserName="cloud-admin")["User"]["Arn"]},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
            iam.create_role(RoleName=break_glass_role.rsplit("/", 1)[-1], AssumeRolePolicyDocument=json.dumps(trust))
            iam.put_role_policy(
                RoleName=break_glass_role.rsplit("/", 1)[-1],
                PolicyName="everything",
                PolicyDocument=json.dumps(everything),
            )
        found: dict[str, str] = {}
        with self.emulator.iam_enforced():
            if break_glass_role:
                session = boto3.client("sts", **admin).assume_role(RoleArn=break_glass_role, RoleSessionName="incident")
                people["break-glass"] = {
                    **base,
                    "aws_access_key_id": session["Credentials"]["AccessKeyId"],
                    "aws_secret_access_key": session["Credentials"]["SecretAccessKey"],
                    "aws_session_token": session["Credentials"]["SessionToken"],
                }
            for who, credentials in people.items():
                found.update(_study_attempts(who, boto3.client("s3", **credentials), bucket, key))
        return found

    def unprotect(self) -> None:
        """What a user does before destroying a site for good: allow it, then apply."""
        self.synth(db_deletion_protection=False, allow_data_destroy=True)
        self.tf.init()
        # Only these carry the settings (deletion protection, final snapshot, force_destroy, recovery
        # windows). A full apply here would also replace the host, because of the emulator gaps
        # (EMULATOR_GAPS), and add minutes that rehearse nothing.
        targets = [r for r in self.state_addresses() if r.split(".")[0] in UNPROTECT_TYPES]
        self.tf.run(
            "apply", "-auto-approve", "-no-color", "-lock=false", *[f"-target={t}" for t in targets], timeout=1200
        )

    def state_value(self, rtype: str, name: str, attribute: str) -> Any:
        return next(
            r["instances"][0]["attributes"][attribute]
            for r in self.state["resources"]
            if r.get("mode") == "managed" and r["type"] == rtype and r["name"] == name
        )

    def state_addresses(self) -> list[str]:
        return [f"{r['type']}.{r['name']}" for r in self.state["resources"] if r.get("mode") == "managed"]

    def destroy(self) -> None:
        # The state was refreshed by the apply just before: a refresh here only repeats reads.
        self.tf.run("destroy", "-auto-approve", "-no-color", "-lock=false", "-refresh=false", timeout=1200)
        left = json.loads(self.state_file.read_text()).get("resources", [])
        managed = [r for r in left if r.get("mode") == "managed"]
        if managed:
            raise PhaseError(f"{len(managed)} resources left after destroy")
        self.destroyed = True
        leftovers = self.left_in_the_account()
        if leftovers:
            raise PhaseError(f"left in the emulated account after destroy: {leftovers}")

    def left_in_the_account(self) -> list[str]:
        """What the AWS APIs still show of the site (not what the state file says)."""
        import boto3

        def client(service: str) -> Any:
            return boto3.client(service, **self.emulator.boto_kwargs())

        left = [f"database {d['DBInstanceIdentifier']}" for d in client("rds").describe_db_instances()["DBInstances"]]
        ec2 = client("ec2")
        left += [f"vpc {v['VpcId']}" for v in ec2.describe_vpcs()["Vpcs"] if not v.get("IsDefault")]
        left += [
            f"instance {i['InstanceId']}"
            for r in ec2.describe_instances()["Reservations"]
            for i in r["Instances"]
            if i["State"]["Name"] != "terminated"
        ]
        left += [f"bucket {b['Name']}" for b in client("s3").list_buckets()["Buckets"]]
        left += [
            f"load balancer {b['LoadBalancerName']}" for b in client("elbv2").describe_load_balancers()["LoadBalancers"]
        ]
        left += [
            f"auto scaling group {g['AutoScalingGroupName']}"
            for g in client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
        ]
        left += [
            f"NAT gateway {n['NatGatewayId']}"
            for n in ec2.describe_nat_gateways()["NatGateways"]
            if n["State"] not in ("deleted", "deleting")
        ]
        left += [f"address {a['PublicIp']}" for a in ec2.describe_addresses()["Addresses"]]
        left += [
            f"secret {s['Name']}"
            for s in client("secretsmanager").list_secrets()["SecretList"]
            if not s.get("DeletedDate")
        ]
        return left

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

    @contextlib.contextmanager
    def running(self) -> Iterator[Rehearsal]:
        """Deployed for the ``with`` block; torn down after it, whatever happened (the emulator
        only, when the block destroyed the site itself). Its Terraform gets the CPU first: in the
        test suite the rehearsal is the critical path, mostly waiting, needing little CPU
        (tools.proc.prioritized, root only)."""
        from tools.proc import prioritized

        with prioritized():
            try:
                self.up()
                yield self
            finally:
                self.down()

    def down(self) -> None:
        try:
            if getattr(self, "tf", None) and not self.destroyed:
                self.phase("switch off deletion protection (apply)", self.unprotect)
                self.phase("terraform destroy", self.destroy)
        finally:
            self.phase("stop emulator", self.stop_emulator)


REHEARSED_PROFILES = ("single", "scaled")


def main(argv: list[str] | None = None) -> int:
    import argparse

    from tools.harness.checks import check_state, run_post_deploy_checks
    from tools.profiles import SCALED_REHEARSAL

    parser = argparse.ArgumentParser(prog="python -m tools.harness.rehearsal", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profile",
        choices=REHEARSED_PROFILES,
        default="single",
        help="single host (default) or 3 hosts behind a load balancer",
    )
    args = parser.parse_args(argv)
    rehearsal = Rehearsal(profile=SCALED_REHEARSAL if args.profile == "scaled" else {})
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
