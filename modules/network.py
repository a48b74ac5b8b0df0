"""VPC, subnets, routes, endpoints and flow logs."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cdktf import Fn, Op, Precondition, TerraformResourceLifecycle
from cdktf_cdktf_provider_aws.data_aws_availability_zones import (
    DataAwsAvailabilityZones,
    DataAwsAvailabilityZonesFilter,
)
from cdktf_cdktf_provider_aws.data_aws_ec2_instance_type_offerings import (
    DataAwsEc2InstanceTypeOfferings,
    DataAwsEc2InstanceTypeOfferingsFilter,
)
from cdktf_cdktf_provider_aws.data_aws_ec2_managed_prefix_list import DataAwsEc2ManagedPrefixList
from cdktf_cdktf_provider_aws.data_aws_rds_orderable_db_instance import DataAwsRdsOrderableDbInstance
from cdktf_cdktf_provider_aws.default_security_group import DefaultSecurityGroup
from cdktf_cdktf_provider_aws.eip import Eip
from cdktf_cdktf_provider_aws.flow_log import FlowLog
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.internet_gateway import InternetGateway
from cdktf_cdktf_provider_aws.nat_gateway import NatGateway
from cdktf_cdktf_provider_aws.route import Route
from cdktf_cdktf_provider_aws.route_table import RouteTable
from cdktf_cdktf_provider_aws.route_table_association import RouteTableAssociation
from cdktf_cdktf_provider_aws.security_group import SecurityGroup
from cdktf_cdktf_provider_aws.subnet import Subnet
from cdktf_cdktf_provider_aws.vpc import Vpc
from cdktf_cdktf_provider_aws.vpc_endpoint import VpcEndpoint
from cdktf_cdktf_provider_aws.vpc_security_group_egress_rule import VpcSecurityGroupEgressRule
from cdktf_cdktf_provider_aws.vpc_security_group_ingress_rule import VpcSecurityGroupIngressRule
from constructs import Construct

from config.facts import DICOM_TLS_PORT, HTTPS_PORT
from modules.account import Account
from modules.logs import encrypted_log_group
from modules.policy import Statement, grant, service_role

# RDS requires a DB subnet group spanning at least two availability zones.
MIN_DB_SUBNET_AZS = 2
# Each subnet takes 1/16 of the VPC: room for 8 public and 8 private subnets.
SUBNET_EXTRA_BITS = 4
PRIVATE_SUBNET_OFFSET = 8
AZ_LETTERS = "abcdef"


def allow_site_clients(
    scope: Construct, security_group_id: str, web_client_cidrs: Sequence[str], dicom_client_cidrs: Sequence[str]
) -> None:
    """The front door's allow-lists as ingress rules: HTTPS from the web clients, DICOM TLS from
    the DICOM clients (on the host in the single-host profile, on the load balancer when scaled)."""
    for label, port, cidrs in (
        ("https", HTTPS_PORT, web_client_cidrs),
        ("dicom-tls", DICOM_TLS_PORT, dicom_client_cidrs),
    ):
        for i, cidr in enumerate(cidrs):
            VpcSecurityGroupIngressRule(
                scope,
                f"{label}-in-{i}",
                security_group_id=security_group_id,
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                cidr_ipv4=cidr,
                description=f"{label} from allowed clients",
            )


def subnet_cidrs(vpc_cidr: str, count: int, offset: int = 0) -> list[str]:
    """The ``count`` subnet ranges starting at ``offset`` among the VPC's /+4 subnets."""
    subnets = ipaddress.IPv4Network(vpc_cidr).subnets(prefixlen_diff=SUBNET_EXTRA_BITS)
    return [str(s) for i, s in enumerate(subnets) if offset <= i < offset + count]


@dataclass(frozen=True)
class NetworkProps:
    name: str
    account: Account
    vpc_cidr: str
    az_count: int
    # The subnets go to zones that offer both (in us-east-1 one zone lacks t3 and t4g, and which
    # letter it is differs per account).
    host_instance_type: str
    db_instance_class: str
    key_arn: str
    log_retention_days: int
    interface_endpoints: tuple[str, ...] = ()
    # The scaled profile's hosts sit in the private subnets and reach the Internet (images,
    # packages, AWS APIs) through one NAT gateway per availability zone: no host has a public address.
    nat_gateways: bool = False


class Network(Construct):
    """A VPC with public subnets (host or load balancer) and private subnets (database, and a
    scaled site's hosts).

    Secure defaults: the default security group has no rules; flow logs record ALL traffic to an
    encrypted log group; S3 traffic stays on the AWS network through a gateway endpoint; the
    private subnets have no route to the Internet unless ``nat_gateways`` gives each zone's hosts
    one through that zone's NAT gateway (a zone's failure does not cut the others off). The site's
    Elastic IP lives here, apart from the host, so a replaced host keeps the address. With
    ``az_count`` 1 the host side uses one AZ while the database subnet group still spans two,
    because RDS requires it.
    """

    def __init__(self, scope: Construct, id_: str, *, props: NetworkProps):
        super().__init__(scope, id_)
        self.vpc = Vpc(
            self,
            "vpc",
            cidr_block=props.vpc_cidr,
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags={"Name": f"{props.name}-vpc"},
        )
        self.default_security_group = DefaultSecurityGroup(
            self, "default-sg", vpc_id=self.vpc.id, ingress=[], egress=[]
        )
        self._subnets(props)
        self._routes(props)
        self.site_eip = Eip(
            self, "site-eip", domain="vpc", tags={"Name": f"{props.name}-site"}, depends_on=[self.internet_gateway]
        )
        # Stateful for users: PACS configurations and the certificate's names point at this address.
        self.site_eip.override_logical_id("site_eip")
        self.endpoint_security_group: SecurityGroup | None = None
        self.interface_endpoints: dict[str, VpcEndpoint] = {}
        if props.interface_endpoints:
            self._interface_endpoints(props)
        self._flow_logs(props)

    def _subnets(self, props: NetworkProps) -> None:
        zones = DataAwsAvailabilityZones(
            self,
            "azs",
            state="available",
            filter=[
                DataAwsAvailabilityZonesFilter(name="opt-in-status", values=["opt-in-not-required"]),
                # An allowlist of the region's lettered zones: a zone AWS adds later cannot move subnets.
                DataAwsAvailabilityZonesFilter(
                    name="zone-name", values=[f"{props.account.region}{letter}" for letter in AZ_LETTERS]
                ),
            ],
        )

        host_zones = DataAwsEc2InstanceTypeOfferings(
            self,
            "host-type-zones",
            location_type="availability-zone",
            filter=[DataAwsEc2InstanceTypeOfferingsFilter(name="instance-type", values=[props.host_instance_type])],
        )
        db_zones = DataAwsRdsOrderableDbInstance(
            self,
            "db-class-zones",
            engine="postgres",
            instance_class=props.db_instance_class,
            storage_type="gp3",
            # One class asked for; several versions may answer: any of them names the class's zones.
            preferred_instance_classes=[props.db_instance_class],
        )
        usable = Fn.sort(Fn.setintersection(zones.names, [host_zones.locations, db_zones.availability_zones]))
        needed = max(props.az_count, MIN_DB_SUBNET_AZS)
        # Fn.element wraps around: with fewer usable zones than subnets, two subnets would share a
        # zone (and RDS refuse the subnet group) without this check at plan time.
        enough_zones = Precondition(
            condition=Op.gte(Fn.length_of(usable), needed),
            error_message=(
                f"The site needs {needed} availability zones of {props.account.region} that offer both "
                f"{props.host_instance_type} and {props.db_instance_class} (PostgreSQL); fewer do. Choose "
                "other classes (instance_type, db_instance_class), a smaller az_count, or another region."
            ),
        )

        def subnets(tier: str, count: int, offset: int = 0) -> list[Subnet]:
            return [
                Subnet(
                    self,
                    f"{tier}-{i}",
                    vpc_id=self.vpc.id,
                    cidr_block=cidr,
                    availability_zone=Fn.element(usable, i),
                    map_public_ip_on_launch=False,
                    tags={"Name": f"{props.name}-{tier}-{i}", "Tier": tier},
                    lifecycle=TerraformResourceLifecycle(precondition=[enough_zones]),
                )
                for i, cidr in enumerate(subnet_cidrs(props.vpc_cidr, count, offset))
            ]

        self.public_subnets = subnets("public", props.az_count)
        self.private_subnets = subnets("private", max(props.az_count, MIN_DB_SUBNET_AZS), PRIVATE_SUBNET_OFFSET)

    def _routes(self, props: NetworkProps) -> None:
        self.internet_gateway = InternetGateway(self, "igw", vpc_id=self.vpc.id, tags={"Name": f"{props.name}-igw"})
        self.public_route_table = RouteTable(
            self, "public-rt", vpc_id=self.vpc.id, tags={"Name": f"{props.name}-public"}
        )
        self.private_route_table = RouteTable(
            self, "private-rt", vpc_id=self.vpc.id, tags={"Name": f"{props.name}-private"}
        )
        Route(
            self,
            "public-default-route",
            route_table_id=self.public_route_table.id,
            destination_cidr_block="0.0.0.0/0",
            gateway_id=self.internet_gateway.id,
        )
        host_tables = self._nat_routes(props) if props.nat_gateways else []
        for i, subnet in enumerate(self.public_subnets):
            RouteTableAssociation(
                self, f"public-rta-{i}", subnet_id=subnet.id, route_table_id=self.public_route_table.id
            )
        for i, subnet in enumerate(self.private_subnets):
            table = host_tables[i] if i < len(host_tables) else self.private_route_table
            RouteTableAssociation(self, f"private-rta-{i}", subnet_id=subnet.id, route_table_id=table.id)
        # Where the hosts run: beside their Elastic IP, or (scaled) behind the NAT gateways.
        self.host_subnets = self.private_subnets[: props.az_count] if props.nat_gateways else self.public_subnets
        self.s3_endpoint = VpcEndpoint(
            self,
            "s3-endpoint",
            vpc_id=self.vpc.id,
            service_name=f"com.amazonaws.{props.account.region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=[self.public_route_table.id, self.private_route_table.id, *(t.id for t in host_tables)],
            tags={"Name": f"{props.name}-s3"},
        )
        # AWS's managed prefix list of S3's ranges in the region: the host reads its entries to let
        # Orthanc's container reach its bucket (userdata/host/egress.py); its ID never changes.
        self.s3_ranges = DataAwsEc2ManagedPrefixList(self, "s3-ranges", name=f"com.amazonaws.{props.account.region}.s3")

    def grant_s3_ranges_read(self, id_: str, role: IamRole) -> None:
        """Let ``role`` read the entries of S3's prefix list (the host, for the containers' egress)."""
        grant(
            self,
            id_,
            role,
            [
                Statement(
                    sid="ReadS3Ranges", actions=["ec2:GetManagedPrefixListEntries"], resources=[self.s3_ranges.arn]
                )
            ],
            "read-s3-ranges",
        )

    def _nat_routes(self, props: NetworkProps) -> list[RouteTable]:
        """One NAT gateway per zone in that zone's public subnet, and a route table sending the
        zone's private subnet to it."""
        tables = []
        for i, public in enumerate(self.public_subnets):
            name = {"Name": f"{props.name}-nat-{i}"}
            address = Eip(self, f"nat-eip-{i}", domain="vpc", tags=name, depends_on=[self.internet_gateway])
            nat = NatGateway(
                self,
                f"nat-{i}",
                allocation_id=address.allocation_id,
                subnet_id=public.id,
                tags=name,
                depends_on=[self.internet_gateway],
            )
            table = RouteTable(self, f"host-rt-{i}", vpc_id=self.vpc.id, tags={"Name": f"{props.name}-hosts-{i}"})
            Route(
                self,
                f"host-default-route-{i}",
                route_table_id=table.id,
                destination_cidr_block="0.0.0.0/0",
                nat_gateway_id=nat.id,
            )
            tables.append(table)
        return tables

    def _interface_endpoints(self, props: NetworkProps) -> None:
        sg = self.endpoint_security_group = SecurityGroup(
            self,
            "endpoint-sg",
            name=f"{props.name}-endpoints",
            vpc_id=self.vpc.id,
            description="HTTPS from inside the VPC to AWS interface endpoints",
        )
        VpcSecurityGroupIngressRule(
            self,
            "endpoint-https-in",
            security_group_id=sg.id,
            ip_protocol="tcp",
            from_port=HTTPS_PORT,
            to_port=HTTPS_PORT,
            cidr_ipv4=props.vpc_cidr,
            description="HTTPS from the VPC",
        )
        VpcSecurityGroupEgressRule(
            self,
            "endpoint-https-out",
            security_group_id=sg.id,
            ip_protocol="tcp",
            from_port=HTTPS_PORT,
            to_port=HTTPS_PORT,
            cidr_ipv4=props.vpc_cidr,
            description="Replies stay in the VPC",
        )
        for service in props.interface_endpoints:
            self.interface_endpoints[service] = VpcEndpoint(
                self,
                f"endpoint-{service}",
                vpc_id=self.vpc.id,
                vpc_endpoint_type="Interface",
                service_name=f"com.amazonaws.{props.account.region}.{service}",
                private_dns_enabled=True,
                subnet_ids=[s.id for s in self.public_subnets],
                security_group_ids=[sg.id],
                tags={"Name": f"{props.name}-{service}"},
            )

    def _flow_logs(self, props: NetworkProps) -> None:
        self.flow_log_group = encrypted_log_group(
            self,
            "flow-log-group",
            name=f"/{props.name}/vpc-flow-logs",
            key_arn=props.key_arn,
            retention_days=props.log_retention_days,
        )
        self.flow_log_role = service_role(
            self,
            "flow-log",
            name=f"{props.name}-vpc-flow-logs",
            service="vpc-flow-logs.amazonaws.com",
            conditions=[("StringEquals", "aws:SourceAccount", [props.account.account_id])],
            inline=[
                Statement(
                    actions=["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                    resources=[self.flow_log_group.arn, f"{self.flow_log_group.arn}:*"],
                )
            ],
            inline_name="write-flow-logs",
        )
        self.flow_log = FlowLog(
            self,
            "flow-log",
            vpc_id=self.vpc.id,
            traffic_type="ALL",
            log_destination_type="cloud-watch-logs",
            log_destination=self.flow_log_group.arn,
            iam_role_arn=self.flow_log_role.arn,
            max_aggregation_interval=60,
        )
