"""Deploy rehearsal in CI: one real `terraform apply` of the default stack against the AWS API
emulator, shared by the checks below, then a second plan (must be empty) and `terraform destroy`."""

from __future__ import annotations

import pytest

from tools import checks
from tools.rehearsal import Rehearsal


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    rehearsal = Rehearsal(workdir=tmp_path_factory.mktemp("rehearsal"), log=lambda line: None)
    try:
        rehearsal.up()
        yield rehearsal
    finally:
        if not getattr(rehearsal, "destroyed", False):
            rehearsal.down()


@pytest.fixture(scope="module")
def deployment(deployed) -> checks.Deployment:
    return checks.Deployment(deployed.state, deployed.outputs, deployed.region, deployed.emulator.endpoint)


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
            )
        )
        for g in gaps
    ), gaps


def test_destroy_leaves_nothing(deployed):
    deployed.unprotect()
    deployed.destroy()
    deployed.destroyed = True
    deployed.stop_emulator()


def _change(rtype: str, before: dict, after: dict, unknown: dict | None = None, actions=("update",)) -> dict:
    return {
        "address": f"{rtype}.x",
        "type": rtype,
        "mode": "managed",
        "change": {
            "actions": list(actions),
            "before": before,
            "after": after,
            "after_unknown": unknown or {},
            # Like Terraform, a replacement names the attributes that force it.
            "replace_paths": [
                [k] for k in sorted(set(before) | set(after)) if k in ("launch_template", "instance_type")
            ],
        },
    }


@pytest.mark.parametrize(
    "changes,real",
    [
        (
            [
                _change(
                    "aws_db_instance", {"performance_insights_enabled": False}, {"performance_insights_enabled": True}
                )
            ],
            0,
        ),
        ([_change("aws_db_instance", {"final_snapshot_identifier": "a-1"}, {"final_snapshot_identifier": "a-2"})], 1),
        ([_change("aws_launch_template", {"latest_version": 1}, {}, {"latest_version": True})], 0),
        ([_change("aws_s3_bucket", {"tags": None}, {"tags": {}})], 0),
        ([_change("aws_s3_bucket", {"tags": {"a": "1"}}, {"tags": {"a": "2"}})], 1),
        # A replacement forced by a value unknown until apply: the new object's defaults are not diffs ...
        (
            [
                _change(
                    "aws_instance",
                    {"hibernation": False, "launch_template": [{"version": "1"}]},
                    {"launch_template": [{}]},
                    {"launch_template": True},
                    ("delete", "create"),
                )
            ],
            0,
        ),
        # ... but a replacement forced by a known value is one.
        ([_change("aws_instance", {"instance_type": "a"}, {"instance_type": "b"}, None, ("delete", "create"))], 1),
    ],
)
def test_second_plan_classifier(changes, real):
    """Unit test of the rehearsal's perpetual-diff detector (no deploy needed)."""
    from tools.rehearsal import classify_second_plan

    found, _ = classify_second_plan({"resource_changes": changes})
    assert len(found) == real
