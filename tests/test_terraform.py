"""Real Terraform on the synthesized stacks: init from the local provider mirror and validate with
no network; plan with fake credentials against the AWS API emulator on loopback. The CLI
configuration we write, for a machine with a provider mirror and for one without, as Terraform reads it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from config import ROOT
from config.inputs import OrthwebConfig
from tests.conftest import PROFILES, synth_json
from tools.harness.emulator import Emulator
from tools.ops.terraform import PLUGIN_CACHE, Terraform, TerraformError, provider_mirror, terraform_cli_config

pytestmark = pytest.mark.terraform
# Planned against the emulator; "extras" (every optional extra) is validated only.
PLANNED = ("az3", "default", "hosts2", "prod", "replica", "scaled")

# Resource types and counts the default single-host profile must plan.
DEFAULT_PLAN = {
    "aws_cloudwatch_dashboard": 1,
    "aws_cloudwatch_log_group": 6,
    "aws_cloudwatch_log_metric_filter": 3,
    "aws_cloudwatch_metric_alarm": 9,
    "aws_db_instance": 1,
    "aws_db_parameter_group": 1,
    "aws_db_subnet_group": 1,
    "aws_default_security_group": 1,
    "aws_eip": 1,
    "aws_eip_association": 1,
    "aws_flow_log": 1,
    "aws_iam_instance_profile": 1,
    "aws_iam_role": 4,
    "aws_iam_role_policy": 10,
    "aws_iam_policy": 1,
    "aws_iam_role_policy_attachment": 1,
    "aws_instance": 1,
    "aws_internet_gateway": 1,
    "aws_kms_alias": 1,
    "aws_kms_key": 2,
    "aws_launch_template": 1,
    "aws_route": 1,
    "aws_route_table": 2,
    "aws_route_table_association": 4,
    "aws_s3_bucket": 3,
    "aws_s3_bucket_lifecycle_configuration": 3,
    "aws_s3_bucket_logging": 2,
    "aws_s3_bucket_notification": 3,
    "aws_s3_bucket_ownership_controls": 3,
    "aws_s3_bucket_policy": 3,
    "aws_s3_bucket_public_access_block": 3,
    "aws_s3_bucket_server_side_encryption_configuration": 3,
    "aws_s3_bucket_versioning": 3,
    "aws_s3_object": 1,
    "aws_secretsmanager_secret": 7,
    "aws_security_group": 2,
    "aws_sns_topic": 1,
    "aws_sns_topic_policy": 1,
    "aws_ssm_document": 1,
    "aws_subnet": 4,
    "aws_vpc": 1,
    "aws_vpc_endpoint": 1,
    "aws_vpc_security_group_egress_rule": 2,
    "aws_vpc_security_group_ingress_rule": 3,
}
# The scaled profile: an Auto Scaling group behind a Network Load Balancer instead of one instance
# with its Elastic IP association, launching as a service-linked role of its own (the site key lets
# it encrypt the hosts' volumes); the balancer's group, rules and second address; per zone a NAT
# gateway with its address, route table and default route (the hosts have no public address).
SCALED_PLAN = {
    **{k: v for k, v in DEFAULT_PLAN.items() if k not in ("aws_instance", "aws_eip_association")},
    "aws_autoscaling_group": 1,
    "aws_iam_service_linked_role": 1,
    "aws_lb": 1,
    "aws_lb_listener": 2,
    "aws_lb_target_group": 2,
    "aws_eip": 4,
    "aws_nat_gateway": 2,
    "aws_route_table": 4,
    "aws_route": 3,
    "aws_security_group": 3,
    "aws_vpc_security_group_ingress_rule": 5,
    "aws_vpc_security_group_egress_rule": 4,
}
# Replication (on in prod, or with replica_region): in the replica's region its key and alias, the
# replica bucket and its access-log bucket with their settings and the replica's access logging; in
# the site's region the replication rule, its role with three inline policies (replicas and replica
# key, the DICOM bucket's versions, the site key through S3) and the failed-replication alarm.
REPLICATION = {
    "aws_kms_key": 1,
    "aws_kms_alias": 1,
    **dict.fromkeys(
        (
            "aws_s3_bucket",
            "aws_s3_bucket_lifecycle_configuration",
            "aws_s3_bucket_notification",
            "aws_s3_bucket_ownership_controls",
            "aws_s3_bucket_policy",
            "aws_s3_bucket_public_access_block",
            "aws_s3_bucket_server_side_encryption_configuration",
            "aws_s3_bucket_versioning",
        ),
        2,
    ),
    "aws_s3_bucket_logging": 1,
    "aws_s3_bucket_replication_configuration": 1,
    "aws_iam_role": 1,
    "aws_iam_role_policy": 3,
    "aws_cloudwatch_metric_alarm": 1,
}


# The audit trail (on in prod, or with cloudtrail): the trail, its topic with its policy, its log
# group and the role that delivers to it with its inline policy.
AUDIT_TRAIL = dict.fromkeys(
    (
        "aws_cloudtrail",
        "aws_cloudwatch_log_group",
        "aws_iam_role",
        "aws_iam_role_policy",
        "aws_sns_topic",
        "aws_sns_topic_policy",
    ),
    1,
)


# Prod owns the account's Session Manager preferences (session_preferences): one more document.
SESSION_PREFERENCES = {"aws_ssm_document": 1}


def replicated(plan: dict[str, int], *more: dict[str, int]) -> dict[str, int]:
    """``plan`` with the replication's resources (and those of ``more``) added."""
    total = dict(plan)
    for extra in (REPLICATION, *more):
        total = {t: total.get(t, 0) + extra.get(t, 0) for t in total | extra}
    return total


EXPECTED = {
    "default": DEFAULT_PLAN,
    "prod": replicated(DEFAULT_PLAN, AUDIT_TRAIL, SESSION_PREFERENCES),
    "replica": replicated(DEFAULT_PLAN),
    "hosts2": SCALED_PLAN,
    "scaled": replicated(
        {**SCALED_PLAN, "aws_sns_topic_subscription": 1, "aws_autoscaling_policy": 1}, AUDIT_TRAIL, SESSION_PREFERENCES
    ),
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


def test_emulator_target_covers_every_service_the_stack_calls(tmp_path):
    """With the emulator target no call can reach real AWS: every service is pointed at loopback
    and the provider carries placeholder keys, so ambient credentials are never used."""
    from config.facts import EMULATOR_PLACEHOLDER_KEY
    from stacks.emulator import EMULATED_SERVICES

    # With replication, so the replica region's provider is checked too.
    config = OrthwebConfig(
        **PROFILES["az3"], replica_region="us-west-2", target="emulator", emulator_endpoint="http://127.0.0.1:4566"
    )
    data = synth_json(config, tmp_path)
    service_of = {
        "aws_s3": "s3",
        "aws_db": "rds",
        "aws_iam": "iam",
        "aws_kms": "kms",
        "aws_secretsmanager": "secretsmanager",
        "aws_cloudwatch_log": "cloudwatchlogs",
        "aws_ssm": "ssm",
        "aws_caller_identity": "sts",
    }
    local = {"aws_region", "aws_partition", "aws_iam_policy_document"}
    types = set(data["resource"]) | {t for t in data["data"] if t not in local}
    needed = {next((svc for prefix, svc in service_of.items() if t.startswith(prefix)), "ec2") for t in types}
    assert needed <= set(EMULATED_SERVICES)
    assert [p.get("alias") for p in data["provider"]["aws"]] == [None, "replica"]
    for provider in data["provider"]["aws"]:
        assert provider["access_key"] == provider["secret_key"] == EMULATOR_PLACEHOLDER_KEY
        assert all(url == "http://127.0.0.1:4566" for url in provider["endpoints"][0].values())


@pytest.mark.parametrize("profile", PLANNED)
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
    assert after["deletion_protection"] is True and after["multi_az"] is config.multi_az
    if config.is_prod:
        assert after["final_snapshot_identifier"] == "orthweb-db-final" and after["skip_final_snapshot"] is False
    if config.replication:
        _replication_planned(plan, managed, config.replication, emulator.endpoint)


def _subnet_zones(plan: dict[str, Any]) -> set[str]:
    return {
        rc["change"]["after"]["availability_zone"]
        for rc in plan["resource_changes"]
        if rc["mode"] == "managed" and rc["type"] == "aws_subnet"
    }


def test_subnets_go_to_zones_that_offer_the_instance_type(emulator, scratch, tmp_path):
    """The zones come from what EC2 offers per zone (the emulator carries us-east-1's real list, where
    one zone lacks t3): trn1.2xlarge is offered in us-east-1c and us-east-1f only, and the subnets
    go there; one zone is not enough for the database's two, and the plan says so."""
    config = OrthwebConfig(instance_type="trn1.2xlarge", target="emulator", emulator_endpoint=emulator.endpoint)
    synth_json(config, tmp_path / "trn1")
    tf = Terraform.offline(tmp_path / "trn1" / "stacks" / config.name, scratch)
    tf.init()
    assert _subnet_zones(tf.plan_json()) == {"us-east-1c", "us-east-1f"}
    single = OrthwebConfig(instance_type="hpc7g.4xlarge", target="emulator", emulator_endpoint=emulator.endpoint)
    synth_json(single, tmp_path / "hpc7g")
    tf = Terraform.offline(tmp_path / "hpc7g" / "stacks" / single.name, scratch)
    tf.init()
    with pytest.raises(TerraformError) as refused:
        tf.plan_json()
    said = " ".join(str(refused.value).split())
    assert "The site needs 2 availability zones of us-east-1 that offer both hpc7g.4xlarge and db.t4g.small" in said


# What Terraform prints (on stderr, exit code 0) about a CLI configuration it cannot use.
CLI_CONFIG_PROBLEMS = "problems with the CLI configuration"
HCL_TOKEN = re.compile(r'\s*(?:#[^\n]*\n?)*\s*("(?:[^"\\]|\\.)*"|[A-Za-z_][\w-]*|[{}\[\]=,]|\S)')


def parse_cli_config(text: str) -> dict[str, Any]:
    """The HCL of a CLI configuration file we write, as a dict: an attribute is its value, a block
    a list of its bodies (``provider_installation { direct {} }`` -> ``{"provider_installation": [{"direct": [{}]}]}``)."""
    tokens = [t for t in HCL_TOKEN.findall(text) if t]

    def value() -> Any:
        token = tokens.pop(0)
        if token == "[":
            items = []
            while tokens[0] != "]":
                items.append(value())
                if tokens[0] == ",":
                    tokens.pop(0)
            tokens.pop(0)
            return items
        if token in ("true", "false"):
            return token == "true"
        assert token.startswith('"'), f"unexpected {token!r}"
        return json.loads(token)

    def body(end: str | None) -> dict[str, Any]:
        found: dict[str, Any] = {}
        while tokens and tokens[0] != end:
            name, mark = tokens.pop(0), tokens.pop(0)
            assert re.fullmatch(r"[A-Za-z_][\w-]*", name), f"unexpected {name!r}"
            if mark == "=":
                assert name not in found, f"{name} twice"
                found[name] = value()
            else:
                assert mark == "{", f"unexpected {mark!r} after {name}"
                found.setdefault(name, []).append(body("}"))
                tokens.pop(0)
        return found

    parsed = body(None)
    assert not tokens
    return parsed


def terraform_with(config: Path, workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "TF_CLI_CONFIG_FILE": str(config), "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"}
    return subprocess.run(
        ["terraform", *args], cwd=workdir, env={**environ, **env}, capture_output=True, text=True, timeout=300
    )


def requiring(folder: Path, name: str, version: str) -> Path:
    """A tiny root module that needs one hashicorp provider."""
    folder.mkdir(parents=True)
    required = {name: {"source": f"hashicorp/{name}", "version": version}}
    (folder / "main.tf.json").write_text(json.dumps({"terraform": {"required_providers": required}}))
    return folder


def test_parse_cli_config_reads_the_hcl_we_write():
    parsed = parse_cli_config(
        '# c\nplugin_cache_dir = "/x"\nb = true\np {\n  m { include = ["a/*", "b"] }\n  d {}\n}\n'
    )
    assert parsed == {"plugin_cache_dir": "/x", "b": True, "p": [{"m": [{"include": ["a/*", "b"]}], "d": [{}]}]}


def test_cli_config_with_a_mirror_installs_the_provider_offline(tmp_path):
    mirror = provider_mirror()
    if mirror is None:  # CI has one (.ci/run fails on a skip); a machine on the registry tests the other branch
        pytest.skip("no filesystem mirror of hashicorp/aws on this machine")
    config = terraform_cli_config(tmp_path / "cli")
    assert config is not None
    parsed = parse_cli_config(config.read_text())
    assert parsed == {
        "provider_installation": [
            {
                "filesystem_mirror": [{"path": str(mirror), "include": ["registry.terraform.io/hashicorp/*"]}],
                "direct": [{"exclude": ["registry.terraform.io/hashicorp/*"]}],
            }
        ]
    }
    version = terraform_with(config, tmp_path, "version")
    assert version.returncode == 0 and CLI_CONFIG_PROBLEMS not in version.stderr, version.stderr
    work = requiring(tmp_path / "work", "aws", "5.100.0")
    # Any attempt to reach the network goes to a closed port: the mirror alone must do.
    offline = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    init = terraform_with(config, work, "init", "-no-color", "-input=false", **offline)
    assert init.returncode == 0, init.stdout + init.stderr
    assert CLI_CONFIG_PROBLEMS not in init.stderr, init.stderr
    assert 'provider "registry.terraform.io/hashicorp/aws"' in (work / ".terraform.lock.hcl").read_text()
    assert "5.100.0" in (work / ".terraform.lock.hcl").read_text()
    providers = terraform_with(config, work, "providers", "-no-color", **offline)
    assert providers.returncode == 0 and CLI_CONFIG_PROBLEMS not in providers.stderr, providers.stderr
    assert "provider[registry.terraform.io/hashicorp/aws] 5.100.0" in providers.stdout


def test_cli_config_without_a_mirror_installs_from_the_registry_through_the_project_cache(tmp_path, no_mirror):
    config = terraform_cli_config(tmp_path / "cli")
    assert config is not None
    text = config.read_text()
    assert "filesystem_mirror" not in text
    parsed = parse_cli_config(text)
    assert parsed == {
        "plugin_cache_dir": str(PLUGIN_CACHE),
        "plugin_cache_may_break_dependency_lock_file": True,
        "provider_installation": [{"direct": [{}]}],
    }
    assert PLUGIN_CACHE.is_dir() and PLUGIN_CACHE.is_relative_to(ROOT / "build")
    version = terraform_with(config, tmp_path, "version")
    assert version.returncode == 0 and CLI_CONFIG_PROBLEMS not in version.stderr, version.stderr
    work = requiring(tmp_path / "work", "null", "3.2.4")
    providers = terraform_with(config, work, "providers", "-no-color")
    assert providers.returncode == 0 and CLI_CONFIG_PROBLEMS not in providers.stderr, providers.stderr

    # The harness on such a machine: the same configuration, inits one at a time through the cache.
    tf = Terraform.offline(work, tmp_path / "tf-cli")
    assert tf.plugin_cache == PLUGIN_CACHE and tf.cli_config.read_text() == text
    try:
        tf.init()
    except TerraformError as error:  # no Internet (as here): Terraform went to the registry itself
        assert "registry.terraform.io" in str(error) and CLI_CONFIG_PROBLEMS not in str(error), str(error)
    else:
        assert any(PLUGIN_CACHE.glob("registry.terraform.io/hashicorp/null/3.2.4/*"))


def _replication_planned(plan: dict, managed: list[dict], region: str, endpoint: str) -> None:
    """The rule as Terraform will send it, and the replica's resources on the second provider (at the emulator)."""
    (rule,) = next(rc for rc in managed if rc["type"] == "aws_s3_bucket_replication_configuration")["change"]["after"][
        "rule"
    ]
    assert rule["status"] == "Enabled" and rule["delete_marker_replication"] == [{"status": "Disabled"}]
    assert rule["source_selection_criteria"][0]["sse_kms_encrypted_objects"] == [{"status": "Enabled"}]
    destination = rule["destination"][0]
    assert destination["storage_class"] == "GLACIER_IR" and destination["metrics"][0]["status"] == "Enabled"
    assert destination["replication_time"] == []
    resources = plan["configuration"]["root_module"]["resources"]
    on_replica = {r["address"] for r in resources if r.get("provider_config_key") == "aws.replica"}
    assert {"aws_s3_bucket.replica_bucket", "aws_kms_key.replica_key"} <= on_replica
    replica = plan["configuration"]["provider_config"]["aws.replica"]["expressions"]
    assert replica["region"]["constant_value"] == region
    assert {e["constant_value"] for e in replica["endpoints"][0].values()} == {endpoint}
