"""The load balancer alone: TLS passed through on both ports, health from Orthanc, one address per AZ,
the client lists on its own group, the hosts reachable only from it."""

from __future__ import annotations

from cdktf_cdktf_provider_aws.eip import Eip
from cdktf_cdktf_provider_aws.lb import Lb
from cdktf_cdktf_provider_aws.lb_listener import LbListener
from cdktf_cdktf_provider_aws.lb_target_group import LbTargetGroup
from cdktf_cdktf_provider_aws.vpc_security_group_ingress_rule import VpcSecurityGroupIngressRule

from config.facts import DICOM_TLS_PORT, HTTPS_PORT
from modules.balancer import DEREGISTRATION_DELAY_SECONDS, HEALTH_PATH, BalancerProps, LoadBalancer


def props(**overrides) -> BalancerProps:
    values = dict(
        name="site",
        vpc_id="vpc-1",
        subnet_ids=["subnet-a", "subnet-b", "subnet-c"],
        first_eip_allocation_id="eipalloc-site",
        web_client_cidrs=("10.1.0.0/16",),
        dicom_client_cidrs=("10.2.0.0/24",),
        deletion_protection=True,
    )
    return BalancerProps(**{**values, **overrides})


def test_tls_passthrough_with_orthanc_health_and_long_draining(build):
    built = build(lambda stack, account: LoadBalancer(stack, "balancer", props=props()))
    assert built.has(
        Lb.TF_RESOURCE_TYPE,
        {"load_balancer_type": "network", "enable_cross_zone_load_balancing": True, "enable_deletion_protection": True},
    )
    listeners = built.resources(LbListener.TF_RESOURCE_TYPE).values()
    assert sorted((li["port"], li["protocol"]) for li in listeners) == [(HTTPS_PORT, "TCP"), (DICOM_TLS_PORT, "TCP")]
    for group in built.resources(LbTargetGroup.TF_RESOURCE_TYPE).values():
        assert group["protocol"] == "TCP" and group["deregistration_delay"] == str(DEREGISTRATION_DELAY_SECONDS)
        check = group["health_check"]
        # Healthy when Orthanc answers behind the host's nginx, not merely nginx (an nginx-only page would stay green).
        assert (check["protocol"], check["path"], check["port"], check["matcher"]) == (
            "HTTPS",
            HEALTH_PATH,
            str(HTTPS_PORT),
            "200",
        )


def test_one_fixed_address_per_zone_the_first_being_the_sites(build):
    built = build(lambda stack, account: LoadBalancer(stack, "balancer", props=props()))
    mapping = next(iter(built.resources(Lb.TF_RESOURCE_TYPE).values()))["subnet_mapping"]
    assert [m["subnet_id"] for m in mapping] == ["subnet-a", "subnet-b", "subnet-c"]
    assert mapping[0]["allocation_id"] == "eipalloc-site", (
        "the address PACS know survives going from one host to several"
    )
    assert set(built.resources(Eip.TF_RESOURCE_TYPE)) == {"nlb_eip_1", "nlb_eip_2"}


def test_client_lists_on_the_balancer_and_hosts_only_behind_it(build):
    def make(stack, account):
        LoadBalancer(stack, "balancer", props=props()).allow_targets("hosts", "sg-hosts")

    built = build(make)
    rules = built.resources(VpcSecurityGroupIngressRule.TF_RESOURCE_TYPE).values()
    from_clients = {(r["from_port"], r["cidr_ipv4"]) for r in rules if "cidr_ipv4" in r}
    assert from_clients == {(HTTPS_PORT, "10.1.0.0/16"), (DICOM_TLS_PORT, "10.2.0.0/24")}
    to_hosts = [r for r in rules if r["security_group_id"] == "sg-hosts"]
    assert sorted(r["from_port"] for r in to_hosts) == [HTTPS_PORT, DICOM_TLS_PORT]
    assert all(
        "cidr_ipv4" not in r and r["referenced_security_group_id"].startswith("${aws_security_group.") for r in to_hosts
    )
