"""The host template alone, and what runs from it: ingress only from the networks a front admits, the AMI
lookup, an SSH key pair only on request; one instance behind the Elastic IP, or a group over its subnets."""

from __future__ import annotations

from cdktf_cdktf_provider_aws.autoscaling_group import AutoscalingGroup
from cdktf_cdktf_provider_aws.data_aws_ssm_parameter import DataAwsSsmParameter
from cdktf_cdktf_provider_aws.eip_association import EipAssociation
from cdktf_cdktf_provider_aws.instance import Instance
from cdktf_cdktf_provider_aws.key_pair import KeyPair
from cdktf_cdktf_provider_aws.launch_template import LaunchTemplate
from cdktf_cdktf_provider_aws.vpc_security_group_ingress_rule import VpcSecurityGroupIngressRule

from config.facts import DICOM_TLS_PORT, HTTPS_PORT
from modules.host import (
    AL2023_AMI_PARAMETER,
    FleetProps,
    HostFleet,
    HostTemplate,
    HostTemplateProps,
    SingleHost,
    SingleHostProps,
)


def props(**overrides) -> HostTemplateProps:
    values = dict(
        name="site",
        vpc_id="vpc-1",
        subnet_id="subnet-a",
        instance_type="t3.medium",
        instance_profile_arn="arn:aws:iam::123456789012:instance-profile/site-host",
        key_arn="arn:aws:kms:us-east-1:123456789012:key/test",
        root_volume_gb=30,
        user_data="#cloud-config\n",
        bundle_data_base64="YnVuZGxl",
        bundle_key="bundles/abc.tar.gz",
        config_bucket="site-config",
    )
    return HostTemplateProps(**{**values, **overrides})


def test_ingress_only_from_the_given_networks(build):
    closed = build(lambda stack, account: HostTemplate(stack, "host", props=props()))
    assert not closed.resources(VpcSecurityGroupIngressRule.TF_RESOURCE_TYPE), "no ingress until a front admits some"
    built = build(
        lambda stack, account: HostTemplate(stack, "host", props=props()).admit_clients(
            ("10.1.0.0/16",), ("10.2.0.0/24",)
        )
    )
    rules = {
        (r["from_port"], r["cidr_ipv4"]) for r in built.resources(VpcSecurityGroupIngressRule.TF_RESOURCE_TYPE).values()
    }
    assert rules == {(HTTPS_PORT, "10.1.0.0/16"), (DICOM_TLS_PORT, "10.2.0.0/24")}


def test_ami_from_ssm_unless_pinned_and_no_key_pair_by_default(build):
    latest = build(lambda stack, account: HostTemplate(stack, "host", props=props()))
    assert latest.has_data(DataAwsSsmParameter.TF_RESOURCE_TYPE, {"name": AL2023_AMI_PARAMETER})
    assert not latest.has(KeyPair.TF_RESOURCE_TYPE)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb5nC2m1wV0Y2bKq3n8dFJkT7H2cX0f5e9r3QmT0aBc admin@site"
    pinned = build(
        lambda stack, account: HostTemplate(
            stack, "host", props=props(ami_id="ami-0123456789abcdef0", ssh_public_key=key)
        )
    )
    assert pinned.has(LaunchTemplate.TF_RESOURCE_TYPE, {"image_id": "ami-0123456789abcdef0"})
    assert pinned.has(KeyPair.TF_RESOURCE_TYPE, {"key_name": "site-host"})
    assert "data" not in pinned.data or DataAwsSsmParameter.TF_RESOURCE_TYPE not in pinned.data["data"]


def test_user_data_is_a_gzip_expression_of_the_text(build):
    built = build(
        lambda stack, account: HostTemplate(stack, "host", props=props(user_data="#cloud-config\nruncmd: []\n"))
    )
    template = next(iter(built.resources(LaunchTemplate.TF_RESOURCE_TYPE).values()))
    assert template["user_data"] == '${base64gzip("#cloud-config\\nruncmd: []\\n")}'
    assert template["metadata_options"]["http_tokens"] == "required"
    # One hop: instance metadata answers the host, never a container behind the Docker bridge.
    assert template["metadata_options"]["http_put_response_hop_limit"] == 1


def test_egress_to_modalities_that_receive_c_move(build):
    from cdktf_cdktf_provider_aws.vpc_security_group_egress_rule import VpcSecurityGroupEgressRule

    plain = build(lambda stack, account: HostTemplate(stack, "host", props=props()))
    assert len(plain.resources(VpcSecurityGroupEgressRule.TF_RESOURCE_TYPE)) == 1  # HTTPS only
    moving = build(
        lambda stack, account: HostTemplate(stack, "host", props=props(move_destinations=[("10.20.1.5", 104)]))
    )
    assert moving.has(
        VpcSecurityGroupEgressRule.TF_RESOURCE_TYPE, {"cidr_ipv4": "10.20.1.5/32", "from_port": 104, "to_port": 104}
    )


def test_one_instance_from_the_template_behind_the_elastic_ip(build):
    def make(stack, account):
        template = HostTemplate(stack, "host", props=props())
        SingleHost(template, props=SingleHostProps(instance_profile_name="site-host", eip_allocation_id="eipalloc-1"))

    built = build(make)
    template = next(iter(built.resources(LaunchTemplate.TF_RESOURCE_TYPE).values()))
    assert template["network_interfaces"][0]["subnet_id"] == "subnet-a"
    (instance,) = built.resources(Instance.TF_RESOURCE_TYPE).values()
    assert instance["launch_template"]["id"].startswith("${aws_launch_template.")
    assert instance["iam_instance_profile"] == "site-host"
    assert built.has(EipAssociation.TF_RESOURCE_TYPE, {"allocation_id": "eipalloc-1"})
    assert not built.has(AutoscalingGroup.TF_RESOURCE_TYPE)


def test_a_group_from_the_template_spread_over_its_subnets(build):
    def make(stack, account):
        template = HostTemplate(stack, "host", props=props(subnet_id=None))
        fleet = FleetProps(subnet_ids=["subnet-p1", "subnet-p2"], target_group_arns=["arn:tg"], desired=2, maximum=4)
        HostFleet(template, props=fleet)

    built = build(make)
    template = next(iter(built.resources(LaunchTemplate.TF_RESOURCE_TYPE).values()))
    assert "subnet_id" not in template["network_interfaces"][0], "the group places each host"
    (group,) = built.resources(AutoscalingGroup.TF_RESOURCE_TYPE).values()
    assert group["vpc_zone_identifier"] == ["subnet-p1", "subnet-p2"] and group["target_group_arns"] == ["arn:tg"]
    assert (group["min_size"], group["max_size"]) == (2, 4) and "desired_capacity" not in group
    assert group["launch_template"]["id"].startswith("${aws_launch_template.")
    assert not built.has(Instance.TF_RESOURCE_TYPE) and not built.has(EipAssociation.TF_RESOURCE_TYPE)
