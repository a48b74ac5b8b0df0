"""A synthesized stack with the resource types planned next added by hand: the host behind a Network
Load Balancer in an Auto Scaling group, alarms to an SNS topic, a dashboard, a DICOM replica bucket
and keys in a second region, a config object, a managed
policy. The generators (tools/maint/diagram.py, cost.py) are tested on it before the stack has them.

Resource names carry an 8-hex suffix like cdktf's, so the hash stripping is exercised too.
"""

from __future__ import annotations

import copy
from typing import Any

from config.facts import DICOM_TLS_PORT, HTTPS_PORT

REPLICA_REGION = "us-west-2"
DESIRED_HOSTS = 2


def _ref(rtype: str, name: str, attr: str) -> str:
    return "${" + f"{rtype}.{name}.{attr}" + "}"


def _first(resources: dict[str, Any], rtype: str, fragment: str = "") -> str:
    return next(k for k in sorted(resources[rtype]) if fragment in k)


def with_planned_resources(data: dict[str, Any]) -> dict[str, Any]:
    d = copy.deepcopy(data)
    r = d["resource"]
    template = _first(r, "aws_launch_template")
    host_role = _first(r, "aws_iam_role", "host")
    public = [k for k in sorted(r["aws_subnet"]) if "public" in k]
    # The host moves behind the load balancer: no single instance, the Elastic IP goes to the NLB.
    del r["aws_instance"]
    del r["aws_eip_association"]
    r["aws_lb"] = {
        "front_nlb_1A2B3C4D": {
            "load_balancer_type": "network",
            "internal": False,
            "subnet_mapping": [
                {"subnet_id": _ref("aws_subnet", public[0], "id"), "allocation_id": _ref("aws_eip", "site_eip", "id")}
            ],
        }
    }
    groups = {"https": HTTPS_PORT, "dicom": DICOM_TLS_PORT}
    r["aws_lb_target_group"] = {
        f"front_{n}-tg_0000000{i}": {"port": p, "protocol": "TCP"} for i, (n, p) in enumerate(groups.items())
    }
    r["aws_lb_listener"] = {
        f"front_{n}-listener_1000000{i}": {
            "load_balancer_arn": _ref("aws_lb", "front_nlb_1A2B3C4D", "arn"),
            "port": p,
            "protocol": "TCP",
            "default_action": [
                {"type": "forward", "target_group_arn": _ref("aws_lb_target_group", f"front_{n}-tg_0000000{i}", "arn")}
            ],
        }
        for i, (n, p) in enumerate(groups.items())
    }
    r["aws_autoscaling_group"] = {
        "host_asg_5E6F7A8B": {
            "launch_template": {"id": _ref("aws_launch_template", template, "id"), "version": "$Latest"},
            "desired_capacity": DESIRED_HOSTS,
            "min_size": 1,
            "max_size": DESIRED_HOSTS,
            "vpc_zone_identifier": [_ref("aws_subnet", s, "id") for s in public],
            "target_group_arns": [_ref("aws_lb_target_group", k, "arn") for k in sorted(r["aws_lb_target_group"])],
        }
    }
    r["aws_sns_topic"] = {**r.get("aws_sns_topic", {}), "ops_alerts_9C0D1E2F": {"name": "orthweb-alerts"}}
    r["aws_sns_topic_subscription"] = {
        "ops_email_3A4B5C6D": {
            "topic_arn": _ref("aws_sns_topic", "ops_alerts_9C0D1E2F", "arn"),
            "protocol": "email",
            "endpoint": "ops@example.org",
        }
    }
    r["aws_cloudwatch_metric_alarm"] = {
        "ops_host-cpu_7B8C9D0E": {
            "alarm_name": "orthweb-host-cpu",
            "period": 300,
            "alarm_actions": [_ref("aws_sns_topic", "ops_alerts_9C0D1E2F", "arn")],
            "dimensions": {"AutoScalingGroupName": _ref("aws_autoscaling_group", "host_asg_5E6F7A8B", "name")},
        }
    }
    r["aws_cloudwatch_dashboard"] = {"ops_dashboard_1F2E3D4C": {"dashboard_name": "orthweb", "dashboard_body": "{}"}}
    r.setdefault("aws_s3_object", {})["storage_readme_2C3D4E5F"] = {
        "bucket": _ref("aws_s3_bucket", "dicom_bucket", "id"),
        "key": "README",
    }
    # The second region: a replica bucket, a replica of the site key and a key of its own.
    d["provider"]["aws"].append({"alias": "replica", "region": REPLICA_REGION})
    r["aws_s3_bucket"]["replica_bucket"] = {"provider": "aws.replica", "bucket_prefix": "orthweb-copy-"}
    r["aws_s3_bucket_replication_configuration"] = {
        "storage_replication_6D7E8F9A": {
            "bucket": _ref("aws_s3_bucket", "dicom_bucket", "id"),
            "role": _ref("aws_iam_role", host_role, "arn"),
            "rule": [{"status": "Enabled", "destination": {"bucket": _ref("aws_s3_bucket", "replica_bucket", "arn")}}],
        }
    }
    r["aws_kms_replica_key"] = {
        "replica_key": {"provider": "aws.replica", "primary_key_arn": _ref("aws_kms_key", "site_key", "arn")}
    }
    r["aws_kms_key"]["replica_region_key"] = {"provider": "aws.replica", "description": "second-region key"}
    r["aws_iam_policy"] = {"storage_replication-policy_0B1C2D3E": {"policy": "{}"}}
    return d
