"""Deploy rehearsal in CI: one real `terraform apply` of the default stack against the AWS API
emulator, shared by the checks below, then a second plan (must be empty) and `terraform destroy`."""

from __future__ import annotations

import json

import pytest

from tools.harness import checks
from tools.harness.rehearsal import Rehearsal

pytestmark = pytest.mark.rehearsal


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    with Rehearsal(workdir=tmp_path_factory.mktemp("rehearsal"), log=lambda line: None).running() as rehearsal:
        yield rehearsal


@pytest.fixture(scope="module")
def deployment(deployed) -> checks.Deployment:
    return checks.deployment_of(deployed)


@pytest.mark.parametrize("check", checks.CHECKS, ids=lambda c: c.__name__)
def test_post_deploy_check(deployment, check):
    assert check(deployment)


def test_checks_can_fail(deployment):
    """A deliberately wrong expectation is caught: the checks read the deployment, not the design."""
    broken = checks.Deployment(
        {**deployment.state},
        {**deployment.outputs, "dbinfo": "nowhere"},
        "us-east-1",
        deployment.client("sts").meta.endpoint_url,
    )
    with pytest.raises(checks.CheckFailed, match="dbinfo nowhere"):
        checks.check_outputs(broken)
    with pytest.raises(checks.CheckFailed, match="secret values found in Terraform state"):
        leaked = checks.secret_values(deployment)[0]
        checks.check_state_hygiene(deployment, "{...}" + leaked)


def test_bootstrap_meets_the_deployment(deployed):
    assert deployed.bootstrap_meets_deployment()


def test_the_host_refresh_fails_without_one_of_its_permissions(deployed):
    """The host's calls are held to its role: with the permission to read its secrets removed from the
    deployed host role, the refresh fails with AccessDenied (the same refresh passed with it, just before)."""
    import boto3

    iam = boto3.client("iam", **deployed.emulator.boto_kwargs())
    role, name = f"{deployed.name}-host", "orthweb-host"
    policy = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
    reduced = {**policy, "Statement": [s for s in policy["Statement"] if s["Sid"] != "ReadSecrets"]}
    assert len(reduced["Statement"]) == len(policy["Statement"]) - 1
    iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(reduced))
    try:
        with deployed.emulator.iam_enforced():
            denied = deployed.run_host("refresh", "refresh-without-read")
    finally:
        iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(policy))
    assert denied.returncode != 0
    said = denied.stdout + denied.stderr
    assert "AccessDeniedException" in said and "not authorized to perform: secretsmanager:GetSecretValue" in said
    assert f"assumed-role/{role}/" in said


def test_the_operator_policy_finds_the_hosts_and_reads_no_data(deployed):
    """A person with only the deployed operator policy, under IAM enforcement: finds the hosts, but
    reads no secret and no DICOM object (Session Manager's document check itself is
    beyond the emulator: check_sessions reads the deployed policy for it)."""
    import boto3

    emulator = deployed.emulator
    iam = boto3.client("iam", **emulator.boto_kwargs())
    iam.create_user(UserName="radiology-it")
    iam.attach_user_policy(UserName="radiology-it", PolicyArn=deployed.outputs["operator_policy_arn"])
    keys = iam.create_access_key(UserName="radiology-it")["AccessKey"]
    person = {
        **emulator.boto_kwargs(),
        "aws_access_key_id": keys["AccessKeyId"],
        "aws_secret_access_key": keys["SecretAccessKey"],
    }
    with emulator.iam_enforced():
        # (the emulator has no DescribeInstanceInformation; the EC2 and Auto Scaling reads stand for it)
        assert boto3.client("ec2", **person).describe_instances()["Reservations"]
        boto3.client("autoscaling", **person).describe_auto_scaling_groups()
        for call in (
            lambda: boto3.client("secretsmanager", **person).get_secret_value(
                SecretId=deployed.outputs["admin_secret"]
            ),
            lambda: boto3.client("s3", **person).list_objects_v2(Bucket=deployed.outputs["bucket_name"]),
        ):
            with pytest.raises(Exception, match="AccessDenied"):
                call()


def test_an_administrator_touches_no_study(deployed):
    """The DICOM bucket's policy names who may touch studies (Orthanc's role: the round trip of the
    bootstrap phase); an administrator whose IAM policy allows every action lists the bucket but
    reads, writes and deletes no study. On the code before this change every call succeeded."""
    assert deployed.study_access() == {
        "administrator lists": "ok",
        "administrator reads": "AccessDenied",
        "administrator writes": "AccessDenied",
        "administrator deletes": "AccessDenied",
    }


def test_validator_reads_the_deployment_outputs_and_secrets(deployed, tmp_path, monkeypatch):
    """make validate's first step on the deployed stack: Terraform reads the outputs from the state,
    and the secrets they name (filled by the bootstrap above) give the password and the site CA."""
    from tools.harness.emulator import FAKE_CREDENTIALS
    from tools.ops.site import deployed_outputs
    from tools.ops.validate import site_secrets

    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    outputs = deployed_outputs(deployed.stack_dir)
    assert outputs["admin_secret"].startswith("arn:aws:secretsmanager:") and outputs["region"] == "us-east-1"
    password, ca = site_secrets(outputs, deployed.emulator.endpoint, tmp_path)
    assert len(password) >= 20 and ca is not None
    assert ca.read_text().startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE" not in ca.read_text()


def test_state_holds_no_secret_value(deployed, deployment):
    """Run after the bootstrap, so the host-generated secrets are compared too."""
    assert "none of the" in checks.check_state_hygiene(deployment, deployed.state_file.read_text())


def test_second_plan_is_empty_but_for_emulator_gaps(deployed):
    gaps = deployed.second_plan()
    assert all(
        any(
            t in g
            for t in (
                "aws_db_",
                "aws_s3_bucket_notification",
                "aws_vpc_security_group",
                "aws_instance",
                "aws_launch_template",
                "aws_eip_association",
                "aws_iam_role_policy",
                # The alarms and the dashboard name the instance, which the emulator gaps replace.
                "aws_cloudwatch_metric_alarm",
                "aws_cloudwatch_dashboard",
            )
        )
        for g in gaps
    ), gaps


def test_destroy_leaves_nothing(deployed):
    deployed.unprotect()
    deployed.destroy()
    assert deployed.destroyed
    deployed.stop_emulator()
