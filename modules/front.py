"""The site's front, one of two: the single host behind the site's Elastic IP, or hosts behind a Network
Load Balancer. The stack picks one and asks it what differs between the profiles: the names clients
connect to, how the hosts are launched and whom they admit, the outputs and the alarms."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from cdktf import Fn
from cdktf_cdktf_provider_aws.eip import Eip

from modules.balancer import LoadBalancer
from modules.host import FleetProps, HostFleet, HostTemplate, SingleHost, SingleHostProps
from modules.key import SiteKey
from modules.monitoring import Monitoring

# An output: (value, description).
Output = tuple[str, str]


@dataclass(frozen=True)
class HostsInfo:
    # The hosts, and how to open a shell on one.
    summary: str
    # One host's instance id in a shell command: the id, or a command substitution that finds one.
    first_host: str


class Front(ABC):
    """What clients connect to and what runs behind it. ``launch`` runs the hosts; ``hosts``,
    ``outputs`` and ``watch`` describe and watch them, so call it first."""

    # The host program's SITE_MODE, and whether several Orthanc servers share the index.
    site_mode: str
    several_hosts: bool
    # What clients connect to, and the other names (``IP:`` addresses) the site certificate carries.
    site_dns: str
    extra_names: Sequence[str]
    # The one subnet of the launch template, or None when the hosts' launcher spreads them over several.
    host_subnet_id: str | None

    @abstractmethod
    def launch(self, template: HostTemplate) -> None:
        """Run the site's hosts from ``template`` and let this front's clients reach them."""

    @abstractmethod
    def hosts(self, region: str) -> HostsInfo:
        """What runs behind the front, for the outputs."""

    @abstractmethod
    def outputs(self) -> dict[str, Output]:
        """This front's own outputs, by name."""

    @abstractmethod
    def watch(self, monitoring: Monitoring) -> None:
        """The alarms and dashboard widgets of the hosts and of this front."""


@dataclass(frozen=True)
class ElasticIpFrontProps:
    eip: Eip
    # The host's subnet: a public one, beside its Elastic IP.
    subnet_id: str
    instance_profile_name: str
    web_client_cidrs: Sequence[str]
    dicom_client_cidrs: Sequence[str]


class ElasticIpFront(Front):
    """One host behind the site's Elastic IP, admitting the client networks itself."""

    site_mode = "single"
    several_hosts = False

    def __init__(self, *, props: ElasticIpFrontProps):
        self.props = props
        self.site_dns = props.eip.public_dns
        self.extra_names = ()
        self.host_subnet_id = props.subnet_id

    def launch(self, template: HostTemplate) -> None:
        props = self.props
        self.instance_type = template.props.instance_type
        template.admit_clients(props.web_client_cidrs, props.dicom_client_cidrs)
        self.host = SingleHost(
            template,
            props=SingleHostProps(
                instance_profile_name=props.instance_profile_name, eip_allocation_id=props.eip.allocation_id
            ),
        )

    def hosts(self, region: str) -> HostsInfo:
        instance = self.host.instance.id
        return HostsInfo(
            f"instance {instance} (no SSH: a shell through Session Manager, see ssm_session_command)", instance
        )

    def outputs(self) -> dict[str, Output]:
        return {}

    def watch(self, monitoring: Monitoring) -> None:
        monitoring.single_host(self.host.instance.id, self.instance_type)


@dataclass(frozen=True)
class BalancedFrontProps:
    # The hosts' subnets (private, behind the NAT gateways) and how many hosts run.
    host_subnet_ids: Sequence[str]
    desired: int
    maximum: int
    site_eip: Eip
    # Its policy must let the group's role encrypt the hosts' volumes.
    key: SiteKey


class BalancedFront(Front):
    """Hosts of an Auto Scaling group behind ``balancer``, which carries the client allow-lists: the
    hosts admit only the balancer."""

    site_mode = "scaled"
    several_hosts = True

    def __init__(self, balancer: LoadBalancer, *, props: BalancedFrontProps):
        self.balancer, self.props = balancer, props
        # The certificate names what clients connect to: the load balancer's name and addresses.
        self.site_dns = balancer.load_balancer.dns_name
        self.extra_names = [f"IP:{e.public_ip}" for e in balancer.extra_eips]
        self.host_subnet_id = None

    def launch(self, template: HostTemplate) -> None:
        props = self.props
        self.fleet = HostFleet(
            template,
            props=FleetProps(
                subnet_ids=props.host_subnet_ids,
                target_group_arns=[g.arn for g in self.balancer.target_groups.values()],
                desired=props.desired,
                maximum=props.maximum,
            ),
        )
        self.balancer.allow_targets("hosts", template.security_group.id)
        # The group's role launches the hosts; their root volumes are encrypted with the site key.
        props.key.allow_autoscaling(self.fleet.autoscaling_role.arn)

    def hosts(self, region: str) -> HostsInfo:
        group = self.fleet.group.name
        return HostsInfo(
            f"hosts of Auto Scaling group {group}; a shell on one: see ssm_session_command",
            f"$(aws autoscaling describe-auto-scaling-groups --auto-scaling-group-names {group} --region {region}"
            " --query 'AutoScalingGroups[0].Instances[0].InstanceId' --output text)",
        )

    def outputs(self) -> dict[str, Output]:
        addresses = [self.props.site_eip.public_ip, *(e.public_ip for e in self.balancer.extra_eips)]
        return {
            "load_balancer_dns": (self.site_dns, "DNS name of the Network Load Balancer"),
            "load_balancer_addresses": (
                Fn.join(",", addresses),
                "The load balancer's fixed addresses, one per availability zone (for PACS configurations)",
            ),
            "host_group": (self.fleet.group.name, "Name of the hosts' Auto Scaling group"),
        }

    def watch(self, monitoring: Monitoring) -> None:
        balancer = self.balancer
        monitoring.fleet(
            self.fleet.group.name,
            balancer.load_balancer.arn_suffix,
            {label: group.arn_suffix for label, group in balancer.target_groups.items()},
        )
