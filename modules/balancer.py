"""The scaled profile's front: a Network Load Balancer with one Elastic IP per availability zone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cdktf_cdktf_provider_aws.eip import Eip
from cdktf_cdktf_provider_aws.lb import Lb, LbSubnetMapping
from cdktf_cdktf_provider_aws.lb_listener import LbListener, LbListenerDefaultAction
from cdktf_cdktf_provider_aws.lb_target_group import LbTargetGroup, LbTargetGroupHealthCheck
from cdktf_cdktf_provider_aws.security_group import SecurityGroup
from cdktf_cdktf_provider_aws.vpc_security_group_egress_rule import VpcSecurityGroupEgressRule
from cdktf_cdktf_provider_aws.vpc_security_group_ingress_rule import VpcSecurityGroupIngressRule
from constructs import Construct

from config.facts import DICOM_TLS_PORT, HTTPS_PORT, TARGET_GROUP_LABELS
from modules.network import allow_site_clients

# The nginx path that answers 200 only while Orthanc answers (docker/nginx.conf): the target is
# healthy when Orthanc is, not merely nginx.
HEALTH_PATH = "/orthanc-health"
# A DICOM association may carry a whole study: let it finish before a host leaves (nginx's stream
# proxy_timeout is 15 minutes too).
DEREGISTRATION_DELAY_SECONDS = 900
HEALTH_CHECK_SECONDS = 10
HEALTHY_THRESHOLD = 3


@dataclass(frozen=True)
class BalancerProps:
    name: str
    vpc_id: str
    subnet_ids: Sequence[str]
    # One Elastic IP per subnet; the first is the site's own Elastic IP, so the address PACS know
    # survives a switch from one host to several.
    first_eip_allocation_id: str
    web_client_cidrs: Sequence[str]
    dicom_client_cidrs: Sequence[str]
    # Refuse deletion, like the database: the front door holds the addresses PACS are configured with.
    deletion_protection: bool


class LoadBalancer(Construct):
    """An internet-facing Network Load Balancer passing TLS through to the hosts' nginx.

    Secure defaults: its own security group carrying the web and DICOM client allow-lists (the hosts
    accept traffic only from this group: ``allow_targets``); TCP listeners for HTTPS and DICOM TLS, so TLS
    (and the DICOM client-certificate check) stays with nginx on each host; target health from
    ``/orthanc-health`` (healthy only while Orthanc answers); cross-zone on; 15 minutes for a host to
    finish its associations before it leaves; one fixed address per availability zone for PACS
    configurations.
    """

    def __init__(self, scope: Construct, id_: str, *, props: BalancerProps):
        super().__init__(scope, id_)
        self.props = props
        self._addresses()
        self._security_group()
        self.load_balancer = Lb(
            self,
            "nlb",
            name=f"{props.name}-nlb",
            load_balancer_type="network",
            internal=False,
            enable_cross_zone_load_balancing=True,
            enable_deletion_protection=props.deletion_protection,
            security_groups=[self.security_group.id],
            subnet_mapping=[
                LbSubnetMapping(subnet_id=subnet, allocation_id=allocation)
                for subnet, allocation in zip(props.subnet_ids, self.allocation_ids, strict=True)
            ],
        )
        ports = dict(zip(TARGET_GROUP_LABELS, (HTTPS_PORT, DICOM_TLS_PORT), strict=True))
        self.target_groups = {label: self._target_group(label, port) for label, port in ports.items()}
        for label, group in self.target_groups.items():
            LbListener(
                self,
                f"{label}-listener",
                load_balancer_arn=self.load_balancer.arn,
                port=ports[label],
                protocol="TCP",
                default_action=[LbListenerDefaultAction(type="forward", target_group_arn=group.arn)],
            )

    def _addresses(self) -> None:
        props = self.props
        self.extra_eips = [
            Eip(self, f"eip-{i}", domain="vpc", tags={"Name": f"{props.name}-nlb-{i}"})
            for i in range(1, len(props.subnet_ids))
        ]
        for i, eip in enumerate(self.extra_eips, start=1):
            # Stateful for users: PACS configurations point at these addresses.
            eip.override_logical_id(f"nlb_eip_{i}")
        self.allocation_ids = [props.first_eip_allocation_id, *(e.allocation_id for e in self.extra_eips)]

    def _security_group(self) -> None:
        props = self.props
        self.security_group = SecurityGroup(
            self,
            "sg",
            name=f"{props.name}-nlb",
            vpc_id=props.vpc_id,
            description="Network Load Balancer: HTTPS and DICOM TLS from the allowed clients",
        )
        allow_site_clients(self, self.security_group.id, props.web_client_cidrs, props.dicom_client_cidrs)

    def _target_group(self, label: str, port: int) -> LbTargetGroup:
        return LbTargetGroup(
            self,
            f"{label}-targets",
            name=f"{self.props.name}-{label}",
            port=port,
            protocol="TCP",
            target_type="instance",
            vpc_id=self.props.vpc_id,
            deregistration_delay=str(DEREGISTRATION_DELAY_SECONDS),
            # Both listeners' targets are healthy when Orthanc answers behind that host's nginx.
            health_check=LbTargetGroupHealthCheck(
                protocol="HTTPS",
                port=str(HTTPS_PORT),
                path=HEALTH_PATH,
                matcher="200",
                interval=HEALTH_CHECK_SECONDS,
                healthy_threshold=HEALTHY_THRESHOLD,
                unhealthy_threshold=HEALTHY_THRESHOLD,
            ),
        )

    def allow_targets(self, id_: str, target_security_group_id: str) -> None:
        """Let the balancer reach the hosts on the HTTPS and DICOM TLS ports, and the hosts accept only that."""
        for label, port in (("https", HTTPS_PORT), ("dicom", DICOM_TLS_PORT)):
            VpcSecurityGroupEgressRule(
                self,
                f"{id_}-{label}-out",
                security_group_id=self.security_group.id,
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                referenced_security_group_id=target_security_group_id,
                description=f"{label} to the hosts",
            )
            VpcSecurityGroupIngressRule(
                self,
                f"{id_}-{label}-in",
                security_group_id=target_security_group_id,
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                referenced_security_group_id=self.security_group.id,
                description=f"{label} from the load balancer",
            )
