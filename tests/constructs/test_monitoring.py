"""Monitoring alone: the single host recovers and reboots itself, the fleet's unhealthy targets and the
database raise alarms, every alarm to the topic (e-mail only when given), the topic encrypted and CloudWatch-only."""

from __future__ import annotations

import json

import pytest
from cdktf_cdktf_provider_aws.cloudwatch_dashboard import CloudwatchDashboard
from cdktf_cdktf_provider_aws.cloudwatch_metric_alarm import CloudwatchMetricAlarm
from cdktf_cdktf_provider_aws.sns_topic import SnsTopic
from cdktf_cdktf_provider_aws.sns_topic_subscription import SnsTopicSubscription

from modules.monitoring import Monitoring, MonitoringProps


def alarms(built) -> dict[str, dict]:
    return {a["alarm_name"]: a for a in built.resources(CloudwatchMetricAlarm.TF_RESOURCE_TYPE).values()}


def single(email: str = "", instance_type: str = "t3.medium"):
    def make(stack, account):
        m = Monitoring(
            stack, "mon", props=MonitoringProps(name="site", account=account, key_arn="arn:key", alarm_email=email)
        )
        m.single_host("i-0123", instance_type)
        m.database("site-db", 20, 1)
        m.dashboard()

    return make


def test_the_single_host_heals_itself(build):
    found = alarms(build(single()))
    recover, reboot = found["site-host-recover"], found["site-host-reboot"]
    assert recover["metric_name"] == "StatusCheckFailed_System" and recover["evaluation_periods"] == 2
    assert reboot["metric_name"] == "StatusCheckFailed_Instance" and reboot["evaluation_periods"] == 3
    assert recover["alarm_actions"][0].endswith(":ec2:recover") and reboot["alarm_actions"][0].endswith(":ec2:reboot")
    assert recover["dimensions"] == {"InstanceId": "i-0123"}


@pytest.mark.parametrize("instance_type", ["c5d.large", "m5.metal", "g4dn.xlarge"])
def test_a_type_ec2_cannot_recover_gets_an_alarm_that_only_notifies(build, instance_type):
    """EC2's recover action needs a listed family, EBS only, no metal: elsewhere it cannot act."""
    recover = alarms(build(single(instance_type=instance_type)))["site-host-recover"]
    assert not any(":ec2:recover" in a for a in recover["alarm_actions"])
    assert f"EC2 cannot recover {instance_type}" in recover["alarm_description"]


def test_every_alarm_notifies_the_encrypted_topic_email_only_when_given(build):
    topic_ref = "${aws_sns_topic.mon_topic"
    quiet = build(single())
    assert not quiet.has(SnsTopicSubscription.TF_RESOURCE_TYPE)
    # Subscribe anything later (chat, paging): the alarms already notify the topic.
    assert all(any(a.startswith(topic_ref) for a in alarm["alarm_actions"]) for alarm in alarms(quiet).values())
    loud = build(single("it@hospital.example"))
    assert loud.has(SnsTopicSubscription.TF_RESOURCE_TYPE, {"protocol": "email", "endpoint": "it@hospital.example"})
    assert loud.has(SnsTopic.TF_RESOURCE_TYPE, {"kms_master_key_id": "arn:key"})
    assert all(any(a.startswith(topic_ref) for a in alarm["ok_actions"]) for alarm in alarms(loud).values())


def test_database_alarms_and_one_dashboard(build):
    built = build(single())
    found = alarms(built)
    assert found["site-db-free-storage"]["threshold"] == 2 * 1024**3  # 10 % of 20 GiB
    assert found["site-db-connections"]["threshold"] == 30  # 10 per host + 20
    assert found["site-root-volume"]["dimensions"] == {"Site": "site"}
    board = next(iter(built.resources(CloudwatchDashboard.TF_RESOURCE_TYPE).values()))
    titles = [w["properties"]["title"] for w in json.loads(board["dashboard_body"])["widgets"]]
    assert titles[:2] == ["Host", "Root volume used (%)"] and "Database" in titles


def test_the_fleet_watches_its_targets(build):
    def make(stack, account):
        m = Monitoring(stack, "mon", props=MonitoringProps(name="site", account=account, key_arn="arn:key"))
        m.fleet(
            "site-hosts", "net/site-nlb/1", {"https": "targetgroup/site-https/1", "dicom": "targetgroup/site-dicom/2"}
        )

    found = alarms(build(make))
    assert {n for n in found if n.endswith("-unhealthy")} == {"site-https-unhealthy", "site-dicom-unhealthy"}
    assert found["site-https-unhealthy"]["dimensions"] == {
        "LoadBalancer": "net/site-nlb/1",
        "TargetGroup": "targetgroup/site-https/1",
    }
    assert "site-host-recover" not in found, "a fleet replaces unhealthy hosts itself"
