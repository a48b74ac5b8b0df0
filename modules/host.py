"""The Orthanc host(s): a launch template and what every host shares, and what runs from it: one
instance behind the site's Elastic IP (``SingleHost``) or an Auto Scaling group (``HostFleet``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cdktf import Fn
from cdktf_cdktf_provider_aws.autoscaling_group import (
    AutoscalingGroup,
    AutoscalingGroupInstanceRefresh,
    AutoscalingGroupInstanceRefreshPreferences,
    AutoscalingGroupLaunchTemplate,
    AutoscalingGroupTag,
)
from cdktf_cdktf_provider_aws.autoscaling_policy import (
    AutoscalingPolicy,
    AutoscalingPolicyTargetTrackingConfiguration,
    AutoscalingPolicyTargetTrackingConfigurationPredefinedMetricSpecification,
)
from cdktf_cdktf_provider_aws.data_aws_ssm_parameter import DataAwsSsmParameter
from cdktf_cdktf_provider_aws.eip_association import EipAssociation
from cdktf_cdktf_provider_aws.iam_service_linked_role import IamServiceLinkedRole
from cdktf_cdktf_provider_aws.instance import Instance
from cdktf_cdktf_provider_aws.key_pair import KeyPair
from cdktf_cdktf_provider_aws.launch_template import (
    LaunchTemplate,
    LaunchTemplateBlockDeviceMappings,
    LaunchTemplateBlockDeviceMappingsEbs,
    LaunchTemplateNetworkInterfaces,
    LaunchTemplateTagSpecifications,
)
from cdktf_cdktf_provider_aws.s3_object import S3Object
from cdktf_cdktf_provider_aws.security_group import SecurityGroup
from cdktf_cdktf_provider_aws.vpc_security_group_egress_rule import VpcSecurityGroupEgressRule
from constructs import Construct

from config.facts import HTTPS_PORT
from modules.hcl import base64gzip_expression
from modules.network import allow_site_clients

# Public SSM parameter AWS keeps pointing at the newest Amazon Linux 2023 x86_64 AMI.
AL2023_AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
# One hop: instance metadata (and the host role's credentials) answers the host itself, never a
# container on the Docker bridge. Orthanc gets credentials of its own narrower role in a file.
IMDS_HOP_LIMIT = 1
IMDS_V2_ONLY = {
    "http_endpoint": "enabled",
    "http_tokens": "required",
    "http_put_response_hop_limit": IMDS_HOP_LIMIT,
    "instance_metadata_tags": "disabled",
}


@dataclass(frozen=True)
class HostTemplateProps:
    """What every host of the site shares, whichever launches it."""

    name: str
    vpc_id: str
    # The one subnet the template puts a host in, or None when its launcher spreads the hosts over
    # several (an Auto Scaling group's subnets).
    subnet_id: str | None
    instance_type: str
    instance_profile_arn: str
    key_arn: str
    root_volume_gb: int
    user_data: str
    # The boot bundle (its key names its SHA-256) and where it goes; the user data names both.
    bundle_data_base64: str
    bundle_key: str
    config_bucket: str
    # (address, port) of modalities Orthanc sends studies to (C-MOVE): egress opened to each.
    move_destinations: Sequence[tuple[str, int]] = ()
    ami_id: str = ""
    ssh_public_key: str = ""


# Long enough for a new host to install Docker, pull the images and pass the load balancer's check.
HEALTH_CHECK_GRACE_SECONDS = 900
# An instance refresh (a new launch template version) keeps full capacity: new hosts first, then
# the old ones leave, each after the warm-up.
REFRESH_MIN_HEALTHY_PERCENT = 100
REFRESH_MAX_HEALTHY_PERCENT = 200
# With room to grow (hosts_max > hosts), hosts are added while their average CPU stays above this
# (Orthanc's ingest is CPU-bound: docs/benchmarks.md) and removed when it falls well below.
SCALE_CPU_PERCENT = 60


class HostTemplate(Construct):
    """What every Orthanc host of the site is launched from: its security group, boot bundle and
    launch template. ``SingleHost`` or ``HostFleet`` runs hosts from it; ``admit_clients`` opens it to
    client networks when no load balancer stands in front.

    Secure defaults: IMDSv2 required with a hop limit of 1 (no container reaches the host role);
    encrypted gp3 root volume with the site key; no SSH port (administer through SSM Session
    Manager); no ingress until a front admits its clients; egress limited to HTTPS (AWS APIs,
    packages), the modalities Orthanc sends studies to, and what other constructs open (PostgreSQL
    to the database); no public address of its own; a small user data that fetches the boot bundle
    (KMS-encrypted, checked by SHA-256) from the config bucket.
    """

    def __init__(self, scope: Construct, id_: str, *, props: HostTemplateProps):
        super().__init__(scope, id_)
        self.props = props
        self._security_group()
        self._bundle()
        self._launch_template()

    def _security_group(self) -> None:
        props = self.props
        self.security_group = SecurityGroup(
            self,
            "sg",
            name=f"{props.name}-host",
            vpc_id=props.vpc_id,
            description="Orthanc host: HTTPS and DICOM TLS in",
        )
        VpcSecurityGroupEgressRule(
            self,
            "https-out",
            security_group_id=self.security_group.id,
            ip_protocol="tcp",
            from_port=HTTPS_PORT,
            to_port=HTTPS_PORT,
            cidr_ipv4="0.0.0.0/0",
            description="AWS APIs and package repositories",
        )
        for i, (address, port) in enumerate(props.move_destinations):
            VpcSecurityGroupEgressRule(
                self,
                f"dicom-move-out-{i}",
                security_group_id=self.security_group.id,
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                cidr_ipv4=f"{address}/32",
                description="C-MOVE: Orthanc sends studies to this modality",
            )

    def admit_clients(self, web_client_cidrs: Sequence[str], dicom_client_cidrs: Sequence[str]) -> None:
        """HTTPS from the web clients and DICOM TLS from the DICOM clients, straight to the hosts."""
        allow_site_clients(self, self.security_group.id, web_client_cidrs, dicom_client_cidrs)

    def _bundle(self) -> None:
        props = self.props
        self.bundle = S3Object(
            self,
            "bundle",
            bucket=props.config_bucket,
            key=props.bundle_key,
            content_base64=props.bundle_data_base64,
            content_type="application/gzip",
            server_side_encryption="aws:kms",
            kms_key_id=props.key_arn,
        )

    def _launch_template(self) -> None:
        props = self.props
        self.key_pair = None
        if props.ssh_public_key:
            self.key_pair = KeyPair(self, "key-pair", key_name=f"{props.name}-host", public_key=props.ssh_public_key)
        image_id = props.ami_id or DataAwsSsmParameter(self, "ami", name=AL2023_AMI_PARAMETER).insecure_value
        self.launch_template = LaunchTemplate(
            self,
            "template",
            name=f"{props.name}-host",
            image_id=image_id,
            instance_type=props.instance_type,
            key_name=self.key_pair.key_name if self.key_pair else None,
            update_default_version=True,
            ebs_optimized="true",
            iam_instance_profile={"arn": props.instance_profile_arn},
            metadata_options=IMDS_V2_ONLY,
            monitoring={"enabled": True},
            block_device_mappings=[
                LaunchTemplateBlockDeviceMappings(
                    device_name="/dev/xvda",
                    ebs=LaunchTemplateBlockDeviceMappingsEbs(
                        volume_type="gp3",
                        volume_size=props.root_volume_gb,
                        encrypted="true",
                        kms_key_id=props.key_arn,
                        delete_on_termination="true",
                    ),
                )
            ],
            # No public address of its own: the single host's is the site's Elastic IP (the bootstrap
            # waits for it before downloading anything); a fleet's hosts sit in private subnets and
            # go out through the NAT gateways.
            network_interfaces=[
                LaunchTemplateNetworkInterfaces(
                    device_index=0,
                    subnet_id=props.subnet_id,
                    associate_public_ip_address="false",
                    delete_on_termination="true",
                    security_groups=[self.security_group.id],
                )
            ],
            tag_specifications=[
                LaunchTemplateTagSpecifications(resource_type=t, tags={"Name": f"{props.name}-host"})
                for t in ("instance", "volume")
            ],
        )
        # Rendered text with deploy-time tokens; gzip keeps it under EC2's 16 KB user-data limit.
        self.launch_template.add_override("user_data", base64gzip_expression(props.user_data))


@dataclass(frozen=True)
class SingleHostProps:
    # The instance's own profile setting (the template names the profile by ARN).
    instance_profile_name: str
    # The site's Elastic IP: the one address of the single host.
    eip_allocation_id: str


class SingleHost:
    """One instance from ``template``, behind the site's Elastic IP (the single-host profile).

    Its resources are children of the template's construct: they keep the Terraform addresses they
    had when one construct built the template and the instance (a new address replaces the host).
    Secure defaults: the template's, stated on the instance as well; an Elastic IP so the address,
    and the certificate names tied to it, survive host replacement.
    """

    def __init__(self, template: HostTemplate, *, props: SingleHostProps):
        shared = template.props
        self.instance = Instance(
            template,
            "instance",
            launch_template={
                "id": template.launch_template.id,
                "version": Fn.tostring(template.launch_template.latest_version),
            },
            # Stated on the instance as well: the instance's own settings are what EC2 (and every
            # scanner) reports, whatever the template said at launch.
            metadata_options=IMDS_V2_ONLY,
            iam_instance_profile=props.instance_profile_name,
            monitoring=True,
            ebs_optimized=True,
            # The boot bundle must be in place before the host fetches it.
            depends_on=[template.bundle],
            root_block_device={
                "volume_type": "gp3",
                "volume_size": shared.root_volume_gb,
                "encrypted": True,
                "kms_key_id": shared.key_arn,
                "delete_on_termination": True,
            },
        )
        self.eip_association = EipAssociation(
            template, "eip-association", allocation_id=props.eip_allocation_id, instance_id=self.instance.id
        )


@dataclass(frozen=True)
class FleetProps:
    """The scaled profile: an Auto Scaling group over these subnets, registered with these target groups."""

    subnet_ids: Sequence[str]
    target_group_arns: Sequence[str]
    desired: int
    maximum: int


class HostFleet:
    """An Auto Scaling group of hosts from ``template`` (the scaled profile): replaced when the load
    balancer finds Orthanc not answering, refreshed at full capacity when the template changes, and
    (with room to grow) scaled on CPU.

    Its resources are children of the template's construct, like ``SingleHost``'s.
    """

    def __init__(self, template: HostTemplate, *, props: FleetProps):
        name = template.props.name
        # The group launches hosts as this role: the site key's policy must let it use the key for
        # the encrypted root volume (SiteKey.allow_autoscaling), or every launch fails with
        # Client.InternalError. A role of the site's own (a suffix on AWS's name) rather than the
        # account's shared AWSServiceRoleForAutoScaling, which may or may not exist yet: a key policy
        # naming a principal that does not exist is refused.
        self.autoscaling_role = IamServiceLinkedRole(
            template,
            "autoscaling-role",
            aws_service_name="autoscaling.amazonaws.com",
            custom_suffix=name,
            description=f"{name}: launches the site's hosts (uses the site key for their volumes)",
        )
        self.group = AutoscalingGroup(
            template,
            "group",
            name=f"{name}-hosts",
            min_size=props.desired,
            # With a scaling policy AWS moves the desired count: Terraform states it only when fixed
            # (otherwise every apply would pull the site back to its minimum).
            desired_capacity=None if props.maximum > props.desired else props.desired,
            max_size=props.maximum,
            vpc_zone_identifier=list(props.subnet_ids),
            launch_template=AutoscalingGroupLaunchTemplate(
                id=template.launch_template.id, version=Fn.tostring(template.launch_template.latest_version)
            ),
            target_group_arns=list(props.target_group_arns),
            service_linked_role_arn=self.autoscaling_role.arn,
            # Replaced when the load balancer finds Orthanc not answering, not only when EC2 fails.
            health_check_type="ELB",
            health_check_grace_period=HEALTH_CHECK_GRACE_SECONDS,
            instance_refresh=AutoscalingGroupInstanceRefresh(
                strategy="Rolling",
                preferences=AutoscalingGroupInstanceRefreshPreferences(
                    min_healthy_percentage=REFRESH_MIN_HEALTHY_PERCENT,
                    max_healthy_percentage=REFRESH_MAX_HEALTHY_PERCENT,
                    instance_warmup=str(HEALTH_CHECK_GRACE_SECONDS),
                ),
            ),
            enabled_metrics=["GroupInServiceInstances", "GroupDesiredCapacity"],
            tag=[AutoscalingGroupTag(key="Name", value=f"{name}-host", propagate_at_launch=True)],
            # The boot bundle must be in place before a host fetches it.
            depends_on=[template.bundle],
        )
        if props.maximum > props.desired:
            AutoscalingPolicy(
                template,
                "cpu-scaling",
                name=f"{name}-cpu",
                autoscaling_group_name=self.group.name,
                policy_type="TargetTrackingScaling",
                # A new host needs its warm-up before its CPU counts.
                estimated_instance_warmup=HEALTH_CHECK_GRACE_SECONDS,
                target_tracking_configuration=AutoscalingPolicyTargetTrackingConfiguration(
                    predefined_metric_specification=AutoscalingPolicyTargetTrackingConfigurationPredefinedMetricSpecification(
                        predefined_metric_type="ASGAverageCPUUtilization"
                    ),
                    target_value=SCALE_CPU_PERCENT,
                ),
            )
