"""The network alone: subnets per AZ count, the zone allowlist, endpoints and NAT gateways only when asked for."""

from __future__ import annotations

import re

from cdktf_cdktf_provider_aws.data_aws_availability_zones import DataAwsAvailabilityZones
from cdktf_cdktf_provider_aws.nat_gateway import NatGateway
from cdktf_cdktf_provider_aws.route import Route
from cdktf_cdktf_provider_aws.route_table_association import RouteTableAssociation
from cdktf_cdktf_provider_aws.security_group import SecurityGroup
from cdktf_cdktf_provider_aws.subnet import Subnet
from cdktf_cdktf_provider_aws.vpc_endpoint import VpcEndpoint

from modules.network import Network, NetworkProps


def props(account, **overrides) -> NetworkProps:
    values = dict(
        name="site",
        account=account,
        vpc_cidr="10.20.0.0/16",
        az_count=2,
        host_instance_type="t3.medium",
        db_instance_class="db.t4g.small",
        key_arn="arn:aws:kms:us-east-1:123456789012:key/test",
        log_retention_days=365,
    )
    return NetworkProps(**{**values, **overrides})


def test_one_az_still_gives_the_database_two_private_subnets(build):
    built = build(lambda stack, account: Network(stack, "network", props=props(account, az_count=1)))
    tiers = [s["tags"]["Tier"] for s in built.resources(Subnet.TF_RESOURCE_TYPE).values()]
    assert sorted(tiers) == ["private", "private", "public"]
    assert built.has(Subnet.TF_RESOURCE_TYPE, {"cidr_block": "10.20.0.0/20", "map_public_ip_on_launch": False})


def test_zones_come_from_an_allowlist(build):
    built = build(lambda stack, account: Network(stack, "network", props=props(account)))
    assert built.has_data(DataAwsAvailabilityZones.TF_RESOURCE_TYPE, {"state": "available"})
    zones = next(iter(built.data["data"][DataAwsAvailabilityZones.TF_RESOURCE_TYPE].values()))
    filters = {f["name"]: f["values"] for f in zones["filter"]}
    assert filters["opt-in-status"] == ["opt-in-not-required"]
    # The region's lettered zones only: a zone AWS adds later cannot move the subnets.
    assert [re.sub(r"^\$\{data\.aws_region\.[^}]+\}", "", z) for z in filters["zone-name"]] == list("abcdef")


def test_interface_endpoints_and_their_group_only_when_asked(build):
    plain = build(lambda stack, account: Network(stack, "network", props=props(account)))
    assert not plain.has(SecurityGroup.TF_RESOURCE_TYPE)
    assert len(plain.resources(VpcEndpoint.TF_RESOURCE_TYPE)) == 1  # the S3 gateway
    with_endpoints = build(
        lambda stack, account: Network(stack, "network", props=props(account, interface_endpoints=("ssm", "kms")))
    )
    assert with_endpoints.has(SecurityGroup.TF_RESOURCE_TYPE)
    assert with_endpoints.has(
        VpcEndpoint.TF_RESOURCE_TYPE, {"vpc_endpoint_type": "Interface", "private_dns_enabled": True}
    )
    assert len(with_endpoints.resources(VpcEndpoint.TF_RESOURCE_TYPE)) == 3


def _subnet(reference: str) -> str:
    found = re.search(r"aws_subnet\.([^.]+)\.id", reference)
    assert found, reference
    return found.group(1)


def test_nat_gateways_one_per_zone_each_zone_routed_to_its_own(build):
    plain = build(lambda stack, account: Network(stack, "network", props=props(account, az_count=3)))
    assert not plain.has(NatGateway.TF_RESOURCE_TYPE)
    assert not any(r.get("nat_gateway_id") for r in plain.resources(Route.TF_RESOURCE_TYPE).values())

    built = build(lambda stack, account: Network(stack, "network", props=props(account, az_count=3, nat_gateways=True)))
    nats = built.resources(NatGateway.TF_RESOURCE_TYPE)
    subnets = built.resources(Subnet.TF_RESOURCE_TYPE)
    assert len(nats) == 3
    # Each NAT gateway sits in a public subnet of its own zone.
    nat_subnets = {_subnet(n["subnet_id"]) for n in nats.values()}
    assert {subnets[s]["tags"]["Tier"] for s in nat_subnets} == {"public"} and len(nat_subnets) == 3
    # Each private subnet's table sends the Internet to the NAT gateway in the same zone.
    routes = {
        r["route_table_id"]: r["nat_gateway_id"]
        for r in built.resources(Route.TF_RESOURCE_TYPE).values()
        if r.get("nat_gateway_id")
    }
    nat_zone = {
        f"${{aws_nat_gateway.{k}.id}}": subnets[_subnet(n["subnet_id"])]["availability_zone"] for k, n in nats.items()
    }
    for association in built.resources(RouteTableAssociation.TF_RESOURCE_TYPE).values():
        subnet = subnets[_subnet(association["subnet_id"])]
        if subnet["tags"]["Tier"] == "private":
            assert nat_zone[routes[association["route_table_id"]]] == subnet["availability_zone"]
