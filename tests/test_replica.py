"""The DICOM replica in a second region: the ``replica_region`` rule (on in prod, opt-in elsewhere,
refused when wrong), the default pairs, and how the synthesized stack, the emulator target, the
diagram and the cost estimate carry it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from config import rds_ca, regions
from config.inputs import ConfigError, OrthwebConfig, load_config
from main import EXIT_CONFIG_ERROR, main
from tests.conftest import synth_json
from tools.maint.diagram import build
from tools.ops.cost import PriceTable, estimate
from tools.ops.tfjson import Stack

PROD: dict[str, Any] = {"environment": "prod", "dicom_client_auth": "certificate"}


def run_main(monkeypatch, tmp_path, capsys, env: dict[str, str]) -> tuple[int, str]:
    environ = {"CDKTF_OUTDIR": str(tmp_path / "out"), **{f"ORTHWEB_{k}": v for k, v in env.items()}}
    monkeypatch.setattr("main.ROOT", tmp_path)  # no orthweb.toml from the developer's checkout
    code = main(environ)
    return code, capsys.readouterr().err


# -- the input ------------------------------------------------------------------------------------------


def test_on_in_prod_to_the_paired_region_off_elsewhere_unless_named():
    assert OrthwebConfig().replication is None
    assert OrthwebConfig(environment="test").replication is None
    assert OrthwebConfig(**PROD).replication == "us-west-2"
    assert OrthwebConfig(**PROD, region="eu-west-1").replication == "eu-central-1"
    assert OrthwebConfig(**PROD, replica_region="none").replication is None
    assert OrthwebConfig(**PROD, replica_region="us-east-2").replication == "us-east-2"
    assert OrthwebConfig(replica_region="eu-west-1").replication == "eu-west-1"


@pytest.mark.parametrize(
    "env,message",
    [
        (
            {"REPLICA_REGION": "us-east-1"},
            "replica_region: 'us-east-1' is not allowed; allowed: a region other than region (us-east-1), or none",
        ),
        (
            {"REPLICA_REGION": "mars-1"},
            "replica_region: 'mars-1' is not allowed; allowed: empty (on in prod), none, or an AWS region with RDS",
        ),
        ({"REPLICA_REGION": "off"}, "replica_region: 'off' is not allowed"),
        (
            {
                "ENVIRONMENT": "prod",
                "DICOM_CLIENT_AUTH": "certificate",
                "REGION": "eu-west-2",
                "WEB_CLIENT_CIDRS": "10.0.0.0/8",
            },
            "replica_region: '' is not allowed; allowed: in prod in eu-west-2 (no other region under the same law),"
            " a region you choose or none",
        ),
    ],
)
def test_a_wrong_replica_region_is_refused_naming_the_field(monkeypatch, tmp_path, capsys, env, message):
    code, err = run_main(monkeypatch, tmp_path, capsys, env)
    assert code == EXIT_CONFIG_ERROR
    assert message in err
    assert all(line.startswith("orthweb: config error: ") for line in err.splitlines())
    assert not (tmp_path / "out").exists()


def test_a_region_without_a_partner_takes_an_explicit_choice(tmp_path):
    base = {"ORTHWEB_ENVIRONMENT": "prod", "ORTHWEB_DICOM_CLIENT_AUTH": "certificate", "ORTHWEB_REGION": "eu-west-2"}
    base["ORTHWEB_WEB_CLIENT_CIDRS"] = "10.0.0.0/8"
    with pytest.raises(ConfigError):
        load_config(tmp_path, base)
    assert load_config(tmp_path, {**base, "ORTHWEB_REPLICA_REGION": "none"}).replication is None
    assert load_config(tmp_path, {**base, "ORTHWEB_REPLICA_REGION": "eu-west-1"}).replication == "eu-west-1"


def test_default_pairs_stay_under_one_law_and_miss_no_partner():
    known = rds_ca.regions()
    assert set(regions.JURISDICTION) == known, "every region Orthweb knows has a jurisdiction"
    for region, partner in regions.DEFAULT_REPLICA_REGION.items():
        assert region in known and partner in known and partner != region
        assert regions.JURISDICTION[region] == regions.JURISDICTION[partner], (region, partner)
    for region in known - set(regions.DEFAULT_REPLICA_REGION):
        same_law = {r for r in known if regions.JURISDICTION[r] == regions.JURISDICTION[region]} - {region}
        assert not same_law, f"{region} has a partner under the same law: {same_law}"


# -- the synthesized stack ------------------------------------------------------------------------------


def statements(stack, fragment: str) -> dict[str, dict]:
    docs = [d for k, d in stack.data_sources("aws_iam_policy_document").items() if fragment in k]
    assert docs, fragment
    return {s.get("sid", ""): s for d in docs for s in d["statement"]}


def test_prod_replicates_to_a_second_provider_and_outputs_the_bucket(prod_stack, default_stack):
    providers = prod_stack.data["provider"]["aws"]
    assert [(p.get("alias"), p["region"]) for p in providers] == [(None, "us-east-1"), ("replica", "us-west-2")]
    assert providers[1]["default_tags"] == providers[0]["default_tags"]
    assert prod_stack.data["output"]["replica_bucket"]["value"] == "${aws_s3_bucket.replica_bucket.bucket}"
    assert "replica_bucket" not in default_stack.data["output"]
    assert len(default_stack.data["provider"]["aws"]) == 1
    assert not default_stack.resources("aws_s3_bucket_replication_configuration")


def test_the_replication_role_has_least_privilege(prod_stack):
    source = statements(prod_stack, "storage_replication-source")
    assert source["ReplicationConfiguration"]["actions"] == ["s3:GetReplicationConfiguration", "s3:ListBucket"]
    assert source["ReplicationConfiguration"]["resources"] == ["${aws_s3_bucket.dicom_bucket.arn}"]
    assert source["ObjectVersionsToReplicate"]["actions"] == [
        "s3:GetObjectVersionForReplication",
        "s3:GetObjectVersionAcl",
        "s3:GetObjectVersionTagging",
    ]
    assert source["ObjectVersionsToReplicate"]["resources"] == ["${aws_s3_bucket.dicom_bucket.arn}/*"]
    # The site key: decrypt only, only through S3 in the site's region.
    (site_key,) = statements(prod_stack, "key_replication").values()
    assert site_key["actions"] == ["kms:Decrypt"] and site_key["resources"] == ["${aws_kms_key.site_key.arn}"]
    (via,) = site_key["condition"]
    assert via["variable"] == "kms:ViaService" and len(via["values"]) == 1
    assert via["values"][0].startswith("s3.${data.aws_region.") and via["values"][0].endswith("}.amazonaws.com")
    role_docs = [
        d
        for k, d in prod_stack.data_sources("aws_iam_policy_document").items()
        if "replication" in k and "trust" not in k
    ]
    actions = [a for d in role_docs for s in d["statement"] for a in s["actions"]]
    assert len(role_docs) == 3 and not any(a == "*" or a.endswith(":*") for a in actions)
    resources = [r for d in role_docs for s in d["statement"] for r in s["resources"]]
    assert "*" not in resources
    policies = [p for k, p in prod_stack.resources("aws_iam_role_policy").items() if "replication" in k]
    (role,) = {p["role"] for p in policies}
    assert role.startswith("${aws_iam_role.replica_replication-role") and len(policies) == 3


def test_object_lock_reaches_the_replica_and_the_role_reads_retention(synth_profile):
    extras = synth_profile("extras")
    source = statements(extras, "storage_replication-source")
    assert {"s3:GetObjectRetention", "s3:GetObjectLegalHold"} <= set(source["ObjectVersionsToReplicate"]["actions"])
    locked = {lock["bucket"] for lock in extras.resources("aws_s3_bucket_object_lock_configuration").values()}
    assert "${aws_s3_bucket.replica_bucket.id}" in locked


def test_replica_buckets_follow_allow_data_destroy(tmp_path):
    data = synth_json(OrthwebConfig(replica_region="us-west-2", allow_data_destroy=True), tmp_path)
    buckets = data["resource"]["aws_s3_bucket"]
    assert buckets["replica_bucket"]["force_destroy"] is True and buckets["replica_log_bucket"]["force_destroy"] is True


def test_failed_replication_raises_an_alarm_on_the_dashboard(prod_stack):
    alarm = next(a for k, a in prod_stack.resources("aws_cloudwatch_metric_alarm").items() if "replication" in k)
    assert alarm["namespace"] == "AWS/S3" and alarm["metric_name"] == "OperationsFailedReplication"
    assert alarm["dimensions"] == {
        "SourceBucket": "${aws_s3_bucket.dicom_bucket.bucket}",
        "DestinationBucket": "${aws_s3_bucket.replica_bucket.bucket}",
        "RuleId": "dicom-to-replica",
    }
    assert alarm["threshold"] == 0 and alarm["treat_missing_data"] == "notBreaching"
    board = json.loads(prod_stack.one("aws_cloudwatch_dashboard")["dashboard_body"])
    assert "Replication to the replica region" in [w["properties"]["title"] for w in board["widgets"]]


def test_emulator_target_points_the_replica_provider_at_loopback_too(tmp_path):
    config = OrthwebConfig(replica_region="us-west-2", target="emulator", emulator_endpoint="http://127.0.0.1:4566")
    data = synth_json(config, tmp_path)
    replica = next(p for p in data["provider"]["aws"] if p.get("alias") == "replica")
    assert replica["region"] == "us-west-2" and replica["skip_credentials_validation"] is True
    assert set(replica["endpoints"][0].values()) == {"http://127.0.0.1:4566"}
    # The replica bucket's real policy (the emulator judges its denies: tools/harness/moto_server.py).
    policy = next(p for k, p in data["resource"]["aws_s3_bucket_policy"].items() if k.startswith("replica_replica"))
    assert [s["Sid"] for s in json.loads(policy["policy"])["Statement"]][:2] == [
        "DenyInsecureTransport",
        "DenyOtherEncryption",
    ]


# -- the diagram and the cost -----------------------------------------------------------------------------


def test_the_replica_is_drawn_in_its_region_with_its_own_key(prod_stack):
    g = build(Stack.from_json(prod_stack.data))
    replica, dicom = "aws_s3_bucket.replica_bucket", "aws_s3_bucket.dicom_bucket"
    assert g.node(replica).cluster == "region:us-west-2" and g.node(dicom).cluster == "region:us-east-1"
    assert {e.label for e in g.edges_between(dicom, replica)} == {"replication"}
    encrypted_by_replica_key = {e.dst for e in g.edges if e.src == "aws_kms_key.replica_key" and e.kind == "encrypts"}
    assert encrypted_by_replica_key == {replica}


def test_the_replica_is_priced_in_its_region_and_storage_class(prod_stack):
    table = PriceTable.load()
    e = estimate(Stack.from_json(prod_stack.data), table)
    lines = {line.address: line for line in e.lines}
    replica = lines["aws_s3_bucket.replica_bucket"]
    west = table.regions["us-west-2"]
    assert replica.region == "us-west-2" and replica.detail == "500 GB Glacier Instant Retrieval"
    assert replica.monthly == pytest.approx(500 * west["s3_glacier_ir_gb_month"])
    rule = lines["aws_s3_bucket_replication_configuration.replica_replication-rule"]
    east = table.regions["us-east-1"]
    assert rule.monthly == pytest.approx(50 * east["inter_region_transfer_gb"] + 4 * east["cloudwatch_metric_month"])
    assert lines["aws_kms_key.replica_key"].region == "us-west-2"
