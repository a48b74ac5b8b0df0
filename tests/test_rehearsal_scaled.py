"""Deploy rehearsal of the scaled profile in CI: one real `terraform apply` of three hosts in an Auto
Scaling group behind a Network Load Balancer against the AWS API emulator, checked through the
elbv2, autoscaling, ec2 and cloudwatch APIs; a host booted from what was deployed; a second plan
(must be empty) and `terraform destroy`. A module of its own so pytest-xdist runs it beside the
single-host rehearsal (tests/test_rehearsal.py)."""

from __future__ import annotations

import pytest

from tools.harness import checks
from tools.harness.rehearsal import Rehearsal
from tools.profiles import SCALED_REHEARSAL

pytestmark = pytest.mark.rehearsal


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    with Rehearsal(
        workdir=tmp_path_factory.mktemp("rehearsal-scaled"), profile=SCALED_REHEARSAL, log=lambda line: None
    ).running() as rehearsal:
        yield rehearsal


@pytest.fixture(scope="module")
def deployment(deployed) -> checks.Deployment:
    return checks.deployment_of(deployed)


@pytest.mark.parametrize("check", checks.SCALED_CHECKS, ids=lambda c: c.__name__)
def test_post_deploy_check(deployment, check):
    assert deployment.scaled
    assert check(deployment)


def test_outputs_name_the_balancer_and_the_group(deployed):
    outputs = deployed.outputs
    assert outputs["hostinfo"].startswith("hosts of Auto Scaling group orthweb-hosts")
    assert outputs["host_group"] == "orthweb-hosts"
    addresses = outputs["load_balancer_addresses"].split(",")
    assert len(addresses) == 2 and addresses[0] == deployed.state_value("aws_eip", "site_eip", "public_ip")
    assert outputs["site_url"] == f"https://{outputs['load_balancer_dns']}"


def test_the_site_owns_the_session_preferences(deployment):
    """The account's default session document, as SSM holds it after the apply, logs like the site's
    (check_sessions holds both to that); the single-host rehearsal leaves the account's own alone."""
    assert sorted(doc["name"] for doc in deployment.all_attrs("aws_ssm_document")) == [
        "SSM-SessionManagerRunShell",
        "orthweb-session",
    ]
    assert "SSM-SessionManagerRunShell" in checks.check_sessions(deployment)


def test_the_break_glass_role_touches_studies_and_an_administrator_does_not(deployed):
    """break_glass_role_arns names a role beside Orthanc's: assumed in an emergency it reads,
    writes and deletes studies, where an administrator with every IAM right is refused."""
    found = deployed.study_access(SCALED_REHEARSAL["break_glass_role_arns"][0])
    assert {k: v for k, v in found.items() if k.startswith("administrator")} == {
        "administrator lists": "ok",
        "administrator reads": "AccessDenied",
        "administrator writes": "AccessDenied",
        "administrator deletes": "AccessDenied",
    }
    assert {k: v for k, v in found.items() if k.startswith("break-glass")} == {
        "break-glass lists": "ok",
        "break-glass reads": "ok",
        "break-glass writes": "ok",
        "break-glass deletes": "ok",
    }


def test_balancer_check_fails_on_a_wrong_subnet(deployment):
    """The balancer check reads AWS, not the design: a public subnet it does not sit in is caught."""
    state = {
        **deployment.state,
        "resources": [
            r
            if not r["name"].startswith("network_public-0_")
            else {**r, "instances": [{"attributes": {**r["instances"][0]["attributes"], "id": "subnet-0"}}]}
            for r in deployment.state["resources"]
        ],
    }
    broken = checks.Deployment(state, deployment.outputs, "us-east-1", deployment.client("sts").meta.endpoint_url)
    with pytest.raises(checks.CheckFailed, match="balancer subnets"):
        checks.check_balancer(broken)


def test_a_host_boots_from_the_deployed_template(deployed):
    assert deployed.bootstrap_meets_deployment()


def test_second_plan_is_empty_but_for_emulator_gaps(deployed):
    gaps = deployed.second_plan()
    assert all(
        any(
            t in g
            for t in (
                "aws_db_",
                "aws_s3_bucket_notification",
                "aws_vpc_security_group",
                "aws_launch_template",
                "aws_iam_role_policy",
                "aws_autoscaling_group",
                "aws_autoscaling_policy",
            )
        )
        for g in gaps
    ), gaps


def test_destroy_leaves_nothing(deployed):
    deployed.unprotect()
    deployed.destroy()
    assert deployed.destroyed
    deployed.stop_emulator()
