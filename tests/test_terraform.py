"""Real Terraform on the synthesized stacks: init from the local provider mirror and validate with
no network; plan with fake credentials against the AWS API emulator on loopback."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from stacks.config import OrthwebConfig
from tests.conftest import PROFILES, synth_json
from tools.emulator import Emulator
from tools.terraform import Terraform

pytestmark = pytest.mark.terraform

# Resource types and counts the default single-host profile must plan.
DEFAULT_PLAN = {
    "aws_kms_key": 1,
    "aws_kms_alias": 1,
    "aws_vpc": 1,
    "aws_subnet": 4,
    "aws_internet_gateway": 1,
    "aws_route_table": 2,
    "aws_route": 1,
    "aws_route_table_association": 4,
    "aws_vpc_endpoint": 1,
    "aws_default_security_group": 1,
    "aws_flow_log": 1,
    "aws_s3_bucket": 2,
    "aws_s3_bucket_server_side_encryption_configuration": 2,
    "aws_s3_bucket_versioning": 2,
    "aws_s3_bucket_public_access_block": 2,
    "aws_s3_bucket_ownership_controls": 2,
    "aws_s3_bucket_policy": 2,
    "aws_s3_bucket_logging": 1,
    "aws_s3_bucket_lifecycle_configuration": 2,
    "aws_db_instance": 1,
    "aws_db_subnet_group": 1,
    "aws_db_parameter_group": 1,
    "aws_security_group": 2,
    "aws_vpc_security_group_ingress_rule": 3,
    "aws_vpc_security_group_egress_rule": 2,
    "aws_launch_template": 1,
    "aws_instance": 1,
    "aws_eip": 1,
    "aws_eip_association": 1,
    "aws_iam_role": 2,
    "aws_iam_role_policy": 2,
    "aws_iam_role_policy_attachment": 1,
    "aws_iam_instance_profile": 1,
    "aws_secretsmanager_secret": 2,
    "aws_cloudwatch_log_group": 2,
}
EXPECTED = {
    "default": DEFAULT_PLAN,
    "prod": DEFAULT_PLAN,
    # Two more subnets, route table associations; an endpoint security group with its two rules and 2 endpoints.
    "az3": {
        **DEFAULT_PLAN,
        "aws_subnet": 6,
        "aws_route_table_association": 6,
        "aws_vpc_endpoint": 3,
        "aws_security_group": 3,
        "aws_vpc_security_group_ingress_rule": 4,
        "aws_vpc_security_group_egress_rule": 3,
    },
}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with Emulator(tmp_path_factory.mktemp("emulator")) as emu:
        yield emu


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("terraform-cli")


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_init_and_validate_offline(synth_profile, scratch, profile):
    stack = synth_profile(profile)
    tf = Terraform.offline(stack.stack_dir, scratch)
    tf.init()
    assert tf.validate()["error_count"] == 0


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_plan_against_emulator(emulator, scratch, tmp_path, profile):
    config = OrthwebConfig(**PROFILES[profile], target="emulator", emulator_endpoint=emulator.endpoint)
    synth_json(config, tmp_path)
    tf = Terraform.offline(tmp_path / "stacks" / config.name, scratch)
    tf.init()
    plan = tf.plan_json()
    managed = [rc for rc in plan["resource_changes"] if rc["mode"] == "managed"]
    actions = Counter(tuple(rc["change"]["actions"]) for rc in managed)
    assert set(actions) == {("create",)}, actions
    planned = Counter(rc["type"] for rc in managed)
    assert dict(planned) == EXPECTED[profile]
    outputs = plan["planned_values"].get("outputs", {})
    assert {"hostinfo", "dbinfo", "s3bucket"} <= set(plan["configuration"]["root_module"]["outputs"])
    assert outputs == {} or all(not o.get("sensitive") for o in outputs.values())
    db = next(rc for rc in managed if rc["type"] == "aws_db_instance")
    after = db["change"]["after"]
    assert after["manage_master_user_password"] is True and after.get("password") is None
    assert after["storage_encrypted"] is True
    assert after["deletion_protection"] is config.is_prod and after["multi_az"] is config.multi_az
    if config.is_prod:
        assert after["final_snapshot_identifier"] == "orthweb-db-final" and after["skip_final_snapshot"] is False
