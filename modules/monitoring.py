"""Alarms a hospital sets up anyway, one dashboard, and the single host's self-healing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cdktf_cdktf_provider_aws.cloudwatch_dashboard import CloudwatchDashboard
from cdktf_cdktf_provider_aws.cloudwatch_log_metric_filter import (
    CloudwatchLogMetricFilter,
    CloudwatchLogMetricFilterMetricTransformation,
)
from cdktf_cdktf_provider_aws.cloudwatch_metric_alarm import CloudwatchMetricAlarm
from cdktf_cdktf_provider_aws.sns_topic_subscription import SnsTopicSubscription
from constructs import Construct

from config.facts import HOST_METRICS_NAMESPACE as HOST_NAMESPACE
from config.facts import HOST_PROGRAM_LOG_TAG, ec2_can_recover
from modules.account import Account
from modules.logs import encrypted_topic

SITE_NAMESPACE = "Orthweb/Site"
MINUTE = 60
HOUR = 60 * MINUTE
# AWS's advice for recover alarms (2 x 1 minute) and reboot alarms (3 x 1 minute).
RECOVER_PERIODS, REBOOT_PERIODS = 2, 3
DB_CPU_PERCENT = 80
DISK_USED_PERCENT = 80
FREE_STORAGE_FRACTION = 0.1
# Orthanc keeps a pool of 5 index connections per host (docker/orthanc.json): far more means a leak
# or a client that should not be there.
DB_CONNECTIONS_PER_HOST, DB_CONNECTIONS_SLACK = 10, 20
FRONT_DOOR_5XX_PER_5_MINUTES = 10
GIB = 1024**3


@dataclass(frozen=True)
class MonitoringProps:
    name: str
    account: Account
    key_arn: str
    # Notifications by email (SNS, encrypted with the site key); empty: alarms without actions but recover/reboot.
    alarm_email: str = ""


class Monitoring(Construct):
    """CloudWatch alarms, an encrypted SNS topic for them, and one dashboard for the site.

    The owner of each watched thing calls the matching method (``single_host``, ``fleet``,
    ``database``, ``front_door``, ``replication``); the dashboard is written once everything is watched
    (``dashboard``). Secure defaults: the topic is encrypted with the site key and only CloudWatch
    of this account may publish to it.
    """

    def __init__(self, scope: Construct, id_: str, *, props: MonitoringProps):
        super().__init__(scope, id_)
        self.props = props
        acct = props.account
        self.topic, _ = encrypted_topic(
            self,
            name=f"{props.name}-alarms",
            key_arn=props.key_arn,
            publisher="cloudwatch.amazonaws.com",
            sid="CloudWatchAlarmsPublish",
            account_id=acct.account_id,
        )
        if props.alarm_email:
            SnsTopicSubscription(self, "email", topic_arn=self.topic.arn, protocol="email", endpoint=props.alarm_email)
        # Every alarm notifies the topic, with or without alarm_email: a subscription added later
        # (e-mail, chat, paging) gets them without another deploy.
        self.notify: list[str] = [self.topic.arn]
        self.alarms: list[CloudwatchMetricAlarm] = []
        self.widgets: list[dict[str, Any]] = []

    def _alarm(self, id_: str, description: str, *, actions: Sequence[str] = (), **settings: Any) -> None:
        alarm = CloudwatchMetricAlarm(
            self,
            id_,
            alarm_name=f"{self.props.name}-{id_}",
            alarm_description=description,
            alarm_actions=[*actions, *self.notify],
            ok_actions=list(self.notify),
            treat_missing_data=settings.pop("treat_missing_data", "missing"),
            **settings,
        )
        self.alarms.append(alarm)

    def _widget(self, title: str, metrics: list[list[Any]], stat: str = "Average") -> None:
        self.widgets.append(
            {
                "type": "metric",
                "width": 12,
                "height": 6,
                "properties": {
                    "title": title,
                    "region": self.props.account.region,
                    "stat": stat,
                    "period": 300,
                    "metrics": metrics,
                },
            }
        )

    def _disk(self) -> None:
        site = {"Site": self.props.name}
        self._alarm(
            "root-volume",
            f"A host's root volume is more than {DISK_USED_PERCENT} % full",
            namespace=HOST_NAMESPACE,
            metric_name="disk_used_percent",
            dimensions=site,
            statistic="Maximum",
            period=5 * MINUTE,
            evaluation_periods=1,
            threshold=DISK_USED_PERCENT,
            comparison_operator="GreaterThanThreshold",
        )
        self._widget(
            "Root volume used (%)", [[HOST_NAMESPACE, "disk_used_percent", "Site", self.props.name]], "Maximum"
        )

    def single_host(self, instance_id: str, instance_type: str) -> None:
        """EC2 recovers the instance when AWS's hardware fails it (same instance id, Elastic IP and
        volume: the same address and certificate), and reboots it when its own status check fails.
        On a type EC2 cannot recover (facts.RECOVERABLE_FAMILIES) the first alarm only notifies."""
        region = self.props.account.region
        partition = self.props.account.partition
        dims = {"InstanceId": instance_id}
        recoverable = ec2_can_recover(instance_type)
        self._alarm(
            "host-recover",
            "The host's system status check fails: EC2 recovers it onto other hardware"
            if recoverable
            else f"The host's system status check fails; EC2 cannot recover {instance_type}: replace the host",
            actions=[f"arn:{partition}:automate:{region}:ec2:recover"] if recoverable else [],
            namespace="AWS/EC2",
            metric_name="StatusCheckFailed_System",
            dimensions=dims,
            statistic="Maximum",
            period=MINUTE,
            evaluation_periods=RECOVER_PERIODS,
            threshold=1,
            comparison_operator="GreaterThanOrEqualToThreshold",
        )
        self._alarm(
            "host-reboot",
            "The host's instance status check fails: EC2 reboots it (the boot unit brings the site back)",
            actions=[f"arn:{partition}:automate:{region}:ec2:reboot"],
            namespace="AWS/EC2",
            metric_name="StatusCheckFailed_Instance",
            dimensions=dims,
            statistic="Maximum",
            period=MINUTE,
            evaluation_periods=REBOOT_PERIODS,
            threshold=1,
            comparison_operator="GreaterThanOrEqualToThreshold",
        )
        self._widget(
            "Host",
            [
                ["AWS/EC2", "CPUUtilization", "InstanceId", instance_id],
                ["AWS/EC2", "StatusCheckFailed", "InstanceId", instance_id, {"stat": "Maximum"}],
            ],
        )
        self._disk()

    def fleet(self, group_name: str, load_balancer: str, target_groups: dict[str, str]) -> None:
        """A target group with an unhealthy host (Orthanc not answering behind a host's nginx)."""
        for label, target_group in target_groups.items():
            self._alarm(
                f"{label}-unhealthy",
                f"A host fails the load balancer's {label} health check (/orthanc-health)",
                namespace="AWS/NetworkELB",
                metric_name="UnHealthyHostCount",
                dimensions={"LoadBalancer": load_balancer, "TargetGroup": target_group},
                statistic="Maximum",
                period=MINUTE,
                evaluation_periods=5,
                threshold=0,
                comparison_operator="GreaterThanThreshold",
            )
        self._widget(
            "Hosts behind the load balancer",
            [
                ["AWS/NetworkELB", "HealthyHostCount", "LoadBalancer", load_balancer, "TargetGroup", tg]
                for tg in target_groups.values()
            ]
            + [["AWS/AutoScaling", "GroupInServiceInstances", "AutoScalingGroupName", group_name]],
        )
        self._disk()

    def database(self, identifier: str, allocated_storage_gb: int, hosts: int) -> None:
        dims = {"DBInstanceIdentifier": identifier}
        self._alarm(
            "db-cpu",
            f"The database's CPU is above {DB_CPU_PERCENT} % for 15 minutes",
            namespace="AWS/RDS",
            metric_name="CPUUtilization",
            dimensions=dims,
            statistic="Average",
            period=5 * MINUTE,
            evaluation_periods=3,
            threshold=DB_CPU_PERCENT,
            comparison_operator="GreaterThanThreshold",
        )
        self._alarm(
            "db-free-storage",
            "The database has less than 10 % of its first allocation free (storage autoscaling may be at its ceiling)",
            namespace="AWS/RDS",
            metric_name="FreeStorageSpace",
            dimensions=dims,
            statistic="Minimum",
            period=5 * MINUTE,
            evaluation_periods=1,
            threshold=int(allocated_storage_gb * FREE_STORAGE_FRACTION * GIB),
            comparison_operator="LessThanThreshold",
        )
        self._alarm(
            "db-connections",
            "More database connections than Orthanc's pools would ever open",
            namespace="AWS/RDS",
            metric_name="DatabaseConnections",
            dimensions=dims,
            statistic="Maximum",
            period=5 * MINUTE,
            evaluation_periods=1,
            threshold=DB_CONNECTIONS_PER_HOST * hosts + DB_CONNECTIONS_SLACK,
            comparison_operator="GreaterThanThreshold",
        )
        self._widget(
            "Database",
            [
                ["AWS/RDS", "CPUUtilization", "DBInstanceIdentifier", identifier],
                ["AWS/RDS", "DatabaseConnections", "DBInstanceIdentifier", identifier, {"yAxis": "right"}],
            ],
        )
        self._widget(
            "Database free storage (bytes)", [["AWS/RDS", "FreeStorageSpace", "DBInstanceIdentifier", identifier]]
        )

    def host_program(self, host_log_group: str) -> None:
        """The host's program failing (a boot or refresh that ends in ERROR: a revoked certificate
        would keep working, a rotated password would not be followed) and its warnings (the site CA
        or the DICOM client CRL near expiry, a new site CA), counted from its log."""
        for id_, level, description, period in (
            ("host-program-errors", "ERROR", "A boot or refresh of a host failed", 5 * MINUTE),
            ("host-program-warnings", "WARNING", "A host warns: CA or CRL near expiry, or a new site CA", HOUR),
        ):
            metric = "HostProgram" + level.capitalize() + "s"
            CloudwatchLogMetricFilter(
                self,
                f"{id_}-filter",
                name=f"{self.props.name}-{id_}",
                log_group_name=host_log_group,
                pattern=f'"{HOST_PROGRAM_LOG_TAG} {level}"',
                metric_transformation=CloudwatchLogMetricFilterMetricTransformation(
                    name=metric, namespace=SITE_NAMESPACE, value="1", default_value="0", dimensions=None
                ),
            )
            self._alarm(
                id_,
                f"{description} (orthweb-bootstrap {level} in {host_log_group})",
                namespace=SITE_NAMESPACE,
                metric_name=metric,
                statistic="Sum",
                period=period,
                evaluation_periods=1,
                threshold=0,
                comparison_operator="GreaterThanThreshold",
                treat_missing_data="notBreaching",
            )

    def front_door(self, container_log_group: str) -> None:
        """5xx answers of nginx (HTTPS requests and DICOM associations), counted from its JSON access log
        in the container log group."""
        CloudwatchLogMetricFilter(
            self,
            "front-door-5xx-filter",
            name=f"{self.props.name}-front-door-5xx",
            log_group_name=container_log_group,
            # nginx logs JSON (docker/nginx.conf): HTTPS requests and DICOM associations both carry
            # "status" as a number; Orthanc's own lines in the same group are not JSON and never match.
            pattern="{ $.status >= 500 }",
            metric_transformation=CloudwatchLogMetricFilterMetricTransformation(
                name="FrontDoor5xx", namespace=SITE_NAMESPACE, value="1", default_value="0", dimensions=None
            ),
        )
        self._alarm(
            "front-door-5xx",
            f"More than {FRONT_DOOR_5XX_PER_5_MINUTES} HTTP 5xx answers from the front door in 5 minutes",
            namespace=SITE_NAMESPACE,
            metric_name="FrontDoor5xx",
            statistic="Sum",
            period=5 * MINUTE,
            evaluation_periods=1,
            threshold=FRONT_DOOR_5XX_PER_5_MINUTES,
            comparison_operator="GreaterThanThreshold",
            treat_missing_data="notBreaching",
        )
        self._widget("Front door 5xx", [[SITE_NAMESPACE, "FrontDoor5xx"]], "Sum")

    def replication(self, source_bucket: str, destination_bucket: str, rule_id: str) -> None:
        """Objects S3 could not replicate (a key or permission problem shows here first, never as an error)."""
        dims = {"SourceBucket": source_bucket, "DestinationBucket": destination_bucket, "RuleId": rule_id}
        self._alarm(
            "replication-failed",
            "S3 failed to replicate DICOM objects to the replica bucket",
            namespace="AWS/S3",
            metric_name="OperationsFailedReplication",
            dimensions=dims,
            statistic="Sum",
            period=5 * MINUTE,
            evaluation_periods=1,
            threshold=0,
            comparison_operator="GreaterThanThreshold",
            treat_missing_data="notBreaching",
        )
        metric = ["SourceBucket", source_bucket, "DestinationBucket", destination_bucket, "RuleId", rule_id]
        self._widget(
            "Replication to the replica region",
            [
                ["AWS/S3", "ReplicationLatency", *metric, {"stat": "Maximum"}],
                ["AWS/S3", "OperationsPendingReplication", *metric, {"yAxis": "right"}],
            ],
        )

    def dashboard(self) -> None:
        self.board = CloudwatchDashboard(
            self, "dashboard", dashboard_name=self.props.name, dashboard_body=json.dumps({"widgets": self.widgets})
        )
