"""AWS's own requirements the emulator does not enforce (tools/ci/aws_rules.py): every reference
profile meets each rule, and each rule fails on a stack that breaks it (a planted break in a copy
of the synthesized JSON)."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import pytest

from tools.ci import aws_rules
from tools.profiles import PROFILES


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_reference_profile_meets_the_rules(synth_profile, profile):
    assert aws_rules.problems(synth_profile(profile).data) == []


def _only(data: dict[str, Any], rtype: str) -> dict[str, Any]:
    found = data["resource"][rtype]
    assert len(found) == 1, sorted(found)
    return next(iter(found.values()))


def _broken(stack, change) -> list[str]:
    data = copy.deepcopy(stack.data)
    change(data)
    return aws_rules.problems(data)


def test_the_scaled_profile_grants_its_autoscaling_role_the_key(synth_profile):
    """The key grant the scaled profile needs on AWS, and the check that fails without it."""
    scaled = synth_profile("scaled")
    group = _only(scaled.data, "aws_autoscaling_group")
    assert group["service_linked_role_arn"].startswith("${aws_iam_service_linked_role.")
    role = _only(scaled.data, "aws_iam_service_linked_role")
    assert role["aws_service_name"] == "autoscaling.amazonaws.com" and role["custom_suffix"]
    policy = json.loads(scaled.data["resource"]["aws_kms_key"]["site_key"]["policy"])
    mine = [s for s in policy["Statement"] if group["service_linked_role_arn"] in str(s["Principal"].get("AWS"))]
    assert {"AutoScalingUsesKeyForHostVolumes", "AutoScalingGrantsForHostVolumes"} == {s["Sid"] for s in mine}

    def drop_grant(data: dict[str, Any]) -> None:
        key = data["resource"]["aws_kms_key"]["site_key"]
        doc = json.loads(key["policy"])
        doc["Statement"] = [s for s in doc["Statement"] if not s["Sid"].startswith("AutoScaling")]
        key["policy"] = json.dumps(doc)

    found = _broken(scaled, drop_grant)
    assert len(found) == 1 and found[0].startswith("autoscaling_role_can_use_the_volume_key: ")
    assert "Client.InternalError" in found[0] and aws_rules.ASG_KEY_DOC in found[0]

    def default_role(data: dict[str, Any]) -> None:
        del _only(data, "aws_autoscaling_group")["service_linked_role_arn"]

    assert "as the account's default Auto Scaling role" in " ".join(_broken(scaled, default_role))


def test_the_trail_depends_on_its_bucket_and_topic_policies(synth_profile):
    extras = synth_profile("extras")
    after = _only(extras.data, "aws_cloudtrail")["depends_on"]
    assert any(d.startswith("aws_s3_bucket_policy.") for d in after)
    assert any(d.startswith("aws_sns_topic_policy.") for d in after)

    def no_depends_on(data: dict[str, Any]) -> None:
        del _only(data, "aws_cloudtrail")["depends_on"]

    found = _broken(extras, no_depends_on)
    assert len(found) == 2 and all(f.startswith("trail_comes_after_its_delivery_policies: ") for f in found)
    assert "InsufficientS3BucketPolicyException" in found[0]


def test_the_backup_job_runs_after_an_explicit_database_window(synth_profile):
    extras = synth_profile("extras")
    db = _only(extras.data, "aws_db_instance")
    assert db["backup_window"] == "03:00-03:30" and db["maintenance_window"].startswith("sun:")
    rule = _only(extras.data, "aws_backup_plan")["rule"][0]
    assert (rule["start_window"], rule["completion_window"]) == (60, 180)

    def no_window(data: dict[str, Any]) -> None:
        del _only(data, "aws_db_instance")["backup_window"]

    assert "AWS picks 30 minutes anywhere" in " ".join(_broken(extras, no_window))

    def in_the_window(data: dict[str, Any]) -> None:
        _only(data, "aws_backup_plan")["rule"][0]["schedule"] = "cron(15 3 * * ? *)"

    assert "falls in" in " ".join(_broken(extras, in_the_window))

    def no_start_window(data: dict[str, Any]) -> None:
        del _only(data, "aws_backup_plan")["rule"][0]["start_window"]

    assert "no explicit start and completion windows" in " ".join(_broken(extras, no_start_window))


def test_user_data_over_16_kb_is_caught_with_every_value_filled_in(synth_profile):
    default = synth_profile("default")

    def grow(data: dict[str, Any]) -> None:
        template = _only(data, "aws_launch_template")
        inner = json.loads(template["user_data"][len("${base64gzip(") : -len(")}")])
        # Incompressible text: the boot bundle's contents pasted into the user data by mistake.
        template["user_data"] = "${base64gzip(" + json.dumps(inner + os.urandom(20_000).hex()) + ")}"

    found = _broken(default, grow)
    assert len(found) == 1 and found[0].startswith("user_data_within_16_kb: ") and "over EC2's 16384" in found[0]


def test_a_parameter_group_of_another_family_is_caught(synth_profile):
    default = synth_profile("default")

    def older_family(data: dict[str, Any]) -> None:
        _only(data, "aws_db_parameter_group")["family"] = "postgres16"

    found = _broken(default, older_family)
    assert len(found) == 1 and "family postgres16" in found[0] and "want postgres17" in found[0]


def test_no_dependency_is_declared_where_the_json_cannot_see_it():
    """cdktf 0.21's node.add_dependency does not reach the synthesized JSON: only depends_on does."""
    from config import ROOT

    product = [ROOT / "main.py", *(ROOT / d for d in ("config", "modules", "stacks", "userdata"))]
    files = [p for path in product for p in ([path] if path.is_file() else sorted(path.rglob("*.py")))]
    assert len(files) > 20
    assert [str(f) for f in files if "add_dependency(" in f.read_text()] == []
