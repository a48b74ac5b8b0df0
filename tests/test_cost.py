"""The cost estimate (tools/ops/cost.py with tools/ops/prices.json): every resource type is priced
or listed as free, the figures follow the stack, and the documented tables are current."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from typing import Any

import pytest

from config import ROOT
from tools.maint import snapshot
from tools.maint.cost_docs import DOC, DOC_PROFILES, markdown, replace_block, summary, write_blocks
from tools.ops import cost
from tools.ops.cost import CostError, PriceTable, estimate
from tools.ops.tfjson import Stack
from tools.profiles import SCALED

TABLE = PriceTable.load()
REGIONS = (
    "us-east-1",
    "us-east-2",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "eu-west-2",
    "ca-central-1",
    "ap-southeast-2",
)
# Types the first stack did not have and the scaled profile (prod with a fleet) builds now.
FLEET_AND_REPLICA_TYPES = (
    "aws_lb",
    "aws_lb_target_group",
    "aws_lb_listener",
    "aws_autoscaling_group",
    "aws_cloudwatch_metric_alarm",
    "aws_cloudwatch_dashboard",
    "aws_sns_topic",
    "aws_sns_topic_subscription",
    "aws_ssm_document",
    "aws_s3_object",
    "aws_s3_bucket_replication_configuration",
    "aws_iam_policy",
    "aws_iam_role",
    "aws_kms_key",
    "aws_cloudwatch_log_group",
)


def stack(data) -> Stack:
    return Stack.from_json(data)


def line(e: cost.Estimate, fragment: str) -> cost.Line:
    found = [x for x in e.lines if fragment in x.address]
    assert len(found) == 1, [x.address for x in e.lines]
    return found[0]


@pytest.fixture(scope="module")
def every_option_stack():
    # tools/maint/snapshot.py's "all" profile: every input away from its default (eu-west-1,
    # random suffix, key pair, three interface endpoints).
    return json.loads(snapshot.synthesize("all"))


# -- nothing slips in unpriced ---------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["default", "prod", "az3", "extras"])
def test_every_resource_type_is_priced_or_free(synth_profile, profile):
    types = stack(synth_profile(profile).data).types()
    assert TABLE.unpriced(types) == [], "add them to tools/ops/prices.json (priced or free)"
    assert estimate(stack(synth_profile(profile).data), TABLE).total > 0


def test_every_option_stack_is_priced(every_option_stack):
    s = stack(every_option_stack)
    assert TABLE.unpriced(s.types()) == []
    e = estimate(s, TABLE)
    assert e.region == "eu-west-1" and e.total > 0
    assert {"random_id", "aws_key_pair"} <= set(e.free_types)


def test_the_fleet_and_the_second_region_are_priced(synth_profile):
    """The real scaled stack (prod with a fleet): the fleet by its count, the balancer, alarms and
    dashboard, and the replica's resources in their provider's region."""
    scaled = stack(synth_profile("scaled").data)
    assert set(FLEET_AND_REPLICA_TYPES) <= scaled.types() and TABLE.unpriced(scaled.types()) == []
    e = estimate(scaled, TABLE)
    asg = line(e, "aws_autoscaling_group")
    hosts, instance_type = SCALED["hosts"], asg.detail.split(" x ")[1].split()[0]
    assert asg.detail.startswith(f"{hosts} x ")
    hourly = TABLE.regions["us-east-1"]["ec2_hour"][instance_type]
    assert asg.items[0].usd == pytest.approx(hosts * 730 * hourly)
    # Second-region resources are priced in their provider's region.
    assert line(e, "aws_s3_bucket.replica_bucket").region == "us-west-2"
    assert line(e, "aws_kms_key.replica_key").region == "us-west-2"
    assert line(e, "aws_s3_bucket_replication_configuration").monthly > 0
    assert line(e, "aws_lb").monthly > 0 and line(e, "aws_cloudwatch_dashboard").monthly > 0


def test_an_unknown_type_stops_the_estimate_naming_it(default_stack, tmp_path, capsys):
    # Negative control: a type the table does not know.
    data = copy.deepcopy(default_stack.data)
    data["resource"]["aws_elasticache_cluster"] = {"cache_0A1B2C3D": {"node_type": "cache.t4g.micro"}}
    assert TABLE.unpriced(stack(data).types()) == ["aws_elasticache_cluster"]
    with pytest.raises(CostError, match="aws_elasticache_cluster"):
        estimate(stack(data), TABLE)
    path = tmp_path / "cdk.tf.json"
    path.write_text(json.dumps(data))
    assert cost.main([str(path)]) == cost.EXIT_ERROR
    assert "aws_elasticache_cluster" in capsys.readouterr().err


def test_the_price_table_is_consistent():
    assert TABLE.date == "2026-11-29"
    assert tuple(TABLE.regions) == REGIONS
    assert TABLE.problems() == []
    assert set(TABLE.priced) == set(cost.RULES)
    raw = json.loads(cost.PRICES.read_text())
    assert "estimate" in " ".join(raw["//"]).lower() and "AWS public list prices" in " ".join(raw["//"])
    assert TABLE.assume("hours_per_month") == 730


def test_the_consistency_check_can_fail():
    regions: dict[str, Any] = copy.deepcopy(dict(TABLE.regions))
    del regions["eu-west-2"]["ec2_hour"]["t3.medium"]
    regions["ca-central-1"]["kms_key_month"] = -1
    priced = {**TABLE.priced, "aws_route": "oops", "aws_ecs_service": "no rule"}
    broken = PriceTable(TABLE.date, TABLE.currency, TABLE.assumptions, priced, TABLE.free, regions)
    problems = "\n".join(broken.problems())
    for expected in (
        "eu-west-2",
        "ec2_hour.t3.medium",
        "ca-central-1: kms_key_month",
        "aws_route: both",
        "aws_ecs_service",
    ):
        assert expected in problems


# -- the figures follow the stack -------------------------------------------------------------------------


def test_prod_costs_more_than_default_by_its_multi_az_database_and_replica(default_stack, prod_stack):
    dev, prod = estimate(stack(default_stack.data), TABLE), estimate(stack(prod_stack.data), TABLE)
    assert prod.total > dev.total
    db_dev, db_prod = line(dev, "aws_db_instance"), line(prod, "aws_db_instance")
    assert "Multi-AZ" in db_prod.detail and "Multi-AZ" not in db_dev.detail
    # Instance and storage twice; the managed secret and monitoring once.
    assert db_prod.items[0].usd == pytest.approx(2 * db_dev.items[0].usd)
    assert db_prod.items[1].usd == pytest.approx(2 * db_dev.items[1].usd)
    # And the DICOM replica (prod's default): its buckets and key, the replication, the failure
    # alarm; and the audit trail (prod's default): its data events, topic and log group.
    replication = [x for x in prod.lines if x.address not in {d.address for d in dev.lines}]
    assert {x.address for x in replication} == {
        "aws_s3_bucket.replica_bucket",
        "aws_s3_bucket.replica_log_bucket",
        "aws_kms_key.replica_key",
        "aws_s3_bucket_replication_configuration.replica_replication-rule",
        "aws_cloudwatch_metric_alarm.monitoring_replication-failed",
        "aws_cloudtrail.trail",
        "aws_sns_topic.trail_topic",
        "aws_cloudwatch_log_group.trail_logs",
    }
    extra = sum(x.monthly for x in replication)
    assert prod.total - dev.total == pytest.approx(db_prod.monthly - db_dev.monthly + extra, abs=0.01)


def test_values_are_read_from_the_json(default_stack):
    config = default_stack.config
    e = estimate(stack(default_stack.data), TABLE)
    host, db = line(e, "aws_instance"), line(e, "aws_db_instance")
    assert host.items[0].what == f"{config.instance_type} x 730 h"
    assert host.items[1].what == f"{config.root_volume_gb} GB gp3"
    assert db.items[0].what.startswith(config.db_instance_class)
    assert db.items[1].what.startswith(f"{config.db_allocated_storage_gb} GB gp3")
    us = TABLE.regions["us-east-1"]
    assert host.items[0].usd == pytest.approx(730 * us["ec2_hour"][config.instance_type])
    assert line(e, "aws_eip").monthly == pytest.approx(730 * us["public_ipv4_hour"])
    assert line(e, "s3-endpoint").monthly == 0


def test_a_value_that_is_not_plain_is_refused(default_stack):
    # Negative control: an instance type Terraform would compute cannot be priced.
    data = copy.deepcopy(default_stack.data)
    template = next(iter(data["resource"]["aws_launch_template"].values()))
    template["instance_type"] = "${var.instance_type}"
    with pytest.raises(CostError, match="instance_type"):
        estimate(stack(data), TABLE)


def test_interface_endpoints_cost_per_availability_zone(synth_profile):
    e = estimate(stack(synth_profile("az3").data), TABLE)
    per_az = TABLE.regions["us-east-1"]["vpce_interface_az_hour"]
    assert line(e, "endpoint-ssm").monthly == pytest.approx(3 * 730 * per_az)


def test_totals_are_positive_and_stable(default_stack):
    first = estimate(stack(default_stack.data), TABLE)
    again = estimate(stack(json.loads(json.dumps(default_stack.data))), PriceTable.load())
    assert first.total > 0 and first.total == again.total
    assert first.text() == again.text() and first.to_json() == again.to_json()
    assert first.total == pytest.approx(math.fsum(x.monthly for x in first.lines), abs=0.005)


def test_region_from_provider_or_option(default_stack):
    s = stack(default_stack.data)
    assert estimate(s, TABLE).region == "us-east-1"
    frankfurt = estimate(s, TABLE, region="eu-central-1")
    assert frankfurt.region == "eu-central-1" and frankfurt.total > estimate(s, TABLE).total


def test_text_and_json_outputs_carry_date_and_assumptions(default_stack, capsys):
    source = str(default_stack.stack_dir / "cdk.tf.json")
    assert cost.main([source]) == 0
    text = capsys.readouterr().out
    assert TABLE.date in text and "hours_per_month = 730" in text and "total" in text
    assert "aws_instance.host_instance" in text
    assert cost.main([source, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["prices_date"] == TABLE.date and data["assumptions"]["hours_per_month"] == 730
    assert data["total_monthly"] == estimate(stack(default_stack.data), TABLE).total


def test_an_unsupported_region_exits_2_with_a_clear_error(default_stack, tmp_path):
    source = default_stack.stack_dir / "cdk.tf.json"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "tools.ops.cost", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)

    proc = run(str(source), "--region", "sa-east-1")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "no prices for region 'sa-east-1'" in proc.stderr and "us-east-1" in proc.stderr
    data = copy.deepcopy(default_stack.data)
    data["provider"]["aws"][0]["region"] = "eu-north-1"
    other = tmp_path / "cdk.tf.json"
    other.write_text(json.dumps(data))
    proc = run(str(other))
    assert proc.returncode == 2 and "'eu-north-1'" in proc.stderr
    # Negative control: a region of the table prices fine.
    assert run(str(source), "--region", "ap-southeast-2").returncode == 0


def test_a_provider_region_that_is_not_plain_needs_the_option(default_stack):
    data = copy.deepcopy(default_stack.data)
    data["provider"]["aws"][0]["region"] = "${var.region}"
    with pytest.raises(CostError, match="--region"):
        estimate(stack(data), TABLE)
    assert estimate(stack(data), TABLE, region="us-west-2").region == "us-west-2"


# -- the documented tables ----------------------------------------------------------------------------------


def test_documented_cost_tables_are_current(synth_profile):
    estimates = {
        f"{profile} profile": estimate(stack(synth_profile(profile).data), TABLE)
        for profile in ("default", "prod", "scaled")
    }
    generated = markdown(estimates)
    text = DOC.read_text()
    assert replace_block(text, generated) == text, "docs/operations-tools.md is stale: run make cost-docs"
    readme = (ROOT / "README.md").read_text()
    assert write_blocks(readme, estimates) == readme, "README's cost summary is stale: run make cost-docs"
    # The summary's columns add up to each total (nothing priced falls outside them).
    for row in summary(estimates).splitlines()[4:]:
        cells = [c.strip(" *") for c in row.strip("|").split("|")[1:]]
        assert abs(sum(float(c) for c in cells[:-1]) - float(cells[-1])) <= len(cells), row
    # Negative control: a different table would be noticed.
    assert replace_block(text, generated.replace("**total**", "**sum**")) != text
    for profile in DOC_PROFILES:
        assert f"**{profile} profile**" in text


def test_make_cost_prints_the_configured_stack(default_stack, tmp_path, monkeypatch, capsys):
    """make cost: the stack this checkout configures (here the default, synthesized into a scratch
    checkout), each resource and the total; without make synth first, a line saying so and exit 2."""
    import shutil

    from tools.ops import cost

    monkeypatch.setattr(cost, "ROOT", tmp_path)
    for name in [k for k in os.environ if k.startswith("ORTHWEB_")]:
        monkeypatch.delenv(name)
    assert cost.main(["--configured"]) == cost.EXIT_ERROR
    assert capsys.readouterr().err.strip() == (
        "cost: no synthesized stack at cdktf.out/stacks/orthweb/cdk.tf.json: run make synth first"
    )
    (tmp_path / "cdktf.out" / "stacks").mkdir(parents=True)
    shutil.copytree(default_stack.stack_dir, tmp_path / "cdktf.out" / "stacks" / "orthweb")
    assert cost.main(["--configured"]) == 0
    printed = capsys.readouterr().out
    expected = estimate(stack(default_stack.data), TABLE)
    assert "aws_db_instance.database" in printed and f"{expected.total:,.2f}" in printed
