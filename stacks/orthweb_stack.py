"""The single-host Orthweb site: one stack wiring the modules together.

What a deletion keeps (``allow_data_destroy``) and what the environment means (``prod`` keeps
automated backups and applies database changes in the maintenance window) is decided here once and
handed to the constructs as plain settings. Cross-construct permissions are granted by the
construct that owns the resource.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from cdktf import Aspects, TerraformOutput, TerraformStack
from cdktf_cdktf_provider_aws.provider import AwsProvider, AwsProviderDefaultTags, AwsProviderEndpoints
from constructs import Construct

from config.facts import DB_NAME, DICOM_TLS_PORT, HOST_METRICS_NAMESPACE, NAME_SUFFIX_BYTES, POSTGRES_PORT
from config.inputs import OrthwebConfig
from modules.access import HostAccess, HostAccessProps
from modules.account import Account
from modules.audit import BackupProps, DatabaseBackup, DataEventTrail, TrailProps
from modules.balancer import BalancerProps, LoadBalancer
from modules.database import Database, DatabaseProps
from modules.front import BalancedFront, BalancedFrontProps, ElasticIpFront, ElasticIpFrontProps, Front
from modules.host import HostTemplate, HostTemplateProps
from modules.key import SiteKey, SiteKeyProps
from modules.monitoring import Monitoring, MonitoringProps
from modules.network import Network, NetworkProps
from modules.replica import RULE_ID as REPLICA_RULE_ID
from modules.replica import Replica, ReplicaProps
from modules.storage import Storage, StorageProps
from stacks import emulator
from userdata import AppValues, HostValues, build_bundle, render_user_data

# Days a deleted secret stays recoverable unless allow_data_destroy.
SECRET_RECOVERY_DAYS = 30


@dataclass(frozen=True)
class Retention:
    """What a deletion keeps, decided once from the environment."""

    force_destroy: bool  # buckets: delete every object version with the bucket
    recovery_window_days: int  # secrets: days a deleted secret stays recoverable
    skip_final_snapshot: bool  # database: no snapshot when it is deleted
    final_snapshot_identifier: str | None
    delete_automated_backups: bool  # database: drop automated backups with it
    apply_immediately: bool  # database: apply changes now, not in the maintenance window

    @classmethod
    def for_environment(cls, config: OrthwebConfig, name: str) -> Retention:
        destroy = config.allow_data_destroy
        return cls(
            force_destroy=destroy,
            recovery_window_days=0 if destroy else SECRET_RECOVERY_DAYS,
            skip_final_snapshot=destroy,
            final_snapshot_identifier=None if destroy else f"{name}-db-final",
            delete_automated_backups=not config.is_prod,
            apply_immediately=not config.is_prod,
        )


def _provider(stack: TerraformStack, config: OrthwebConfig, alias: str | None = None) -> AwsProvider:
    """The site region's provider, or with ``alias`` the provider of the replica's region."""
    default_tags = [AwsProviderDefaultTags(tags=config.tag_map)]
    region = (config.replication or config.region) if alias else config.region
    settings: dict[str, Any] = {}
    if config.target == "emulator":
        settings = emulator.provider_settings(config.emulator_endpoint)
        settings["endpoints"] = [AwsProviderEndpoints(**e) for e in settings["endpoints"]]
    id_ = f"aws-{alias}" if alias else "aws"
    return AwsProvider(stack, id_, region=region, alias=alias, default_tags=default_tags, **settings)


class OrthwebStack(TerraformStack):
    """Network, key, storage, database, host access and host of one Orthweb site, with its outputs."""

    def __init__(self, scope: Construct, id_: str, *, config: OrthwebConfig):
        super().__init__(scope, id_)
        self.config = config
        _provider(self, config)
        self.name = name = self._name(config)
        retention = Retention.for_environment(config, name)
        self.account = account = Account(self, "account")
        self.key = SiteKey(self, "key", props=SiteKeyProps(name=name, account=account))
        self.network = Network(
            self,
            "network",
            props=NetworkProps(
                name=name,
                account=account,
                vpc_cidr=config.vpc_cidr,
                az_count=config.az_count,
                host_instance_type=config.instance_type,
                db_instance_class=config.db_instance_class,
                key_arn=self.key.arn,
                log_retention_days=config.retention_days,
                interface_endpoints=config.interface_endpoints,
                # Read here as well as in _front: the network comes first (the front needs its subnets).
                nat_gateways=config.scaled,
            ),
        )
        self.storage = Storage(
            self,
            "storage",
            props=StorageProps(
                name=name,
                account=account,
                key_arn=self.key.arn,
                force_destroy=retention.force_destroy,
                noncurrent_version_expiration_days=config.noncurrent_version_expiration_days,
                log_retention_days=config.retention_days,
                intelligent_tiering=config.intelligent_tiering,
                object_lock_days=config.object_lock_days,
            ),
        )
        self.database = Database(
            self,
            "database",
            props=DatabaseProps(
                name=name,
                account=account,
                vpc_id=self.network.vpc.id,
                subnet_ids=[s.id for s in self.network.private_subnets],
                key_arn=self.key.arn,
                instance_class=config.db_instance_class,
                allocated_storage_gb=config.db_allocated_storage_gb,
                max_allocated_storage_gb=config.db_max_allocated_storage_gb,
                multi_az=config.multi_az,
                backup_retention_days=config.db_backup_retention_days,
                deletion_protection=config.db_deletion_protection,
                log_retention_days=config.retention_days,
                skip_final_snapshot=retention.skip_final_snapshot,
                final_snapshot_identifier=retention.final_snapshot_identifier,
                delete_automated_backups=retention.delete_automated_backups,
                apply_immediately=retention.apply_immediately,
            ),
        )
        self.access = HostAccess(
            self,
            "access",
            props=HostAccessProps(
                name=name,
                account=account,
                key_arn=self.key.arn,
                log_retention_days=config.retention_days,
                recovery_window_days=retention.recovery_window_days,
                byo_tls_secret=config.tls_certificate_secret,
                session_preferences=config.owns_session_preferences,
            ),
        )
        self._grants()
        if config.replication:
            self._replica(config, name, retention)
        self.front = self._front(config, name)
        bundle = build_bundle(self._app_values(config))
        self.host = HostTemplate(
            self,
            "host",
            props=HostTemplateProps(
                name=name,
                vpc_id=self.network.vpc.id,
                subnet_id=self.front.host_subnet_id,
                instance_type=config.instance_type,
                instance_profile_arn=self.access.instance_profile.arn,
                key_arn=self.key.arn,
                root_volume_gb=config.root_volume_gb,
                user_data=render_user_data(self._host_values(config), bundle),
                bundle_data_base64=base64.b64encode(bundle.data).decode(),
                bundle_key=bundle.key,
                config_bucket=self.storage.config_bucket.id,
                move_destinations=[(m.host, m.port) for m in config.dicom_modalities if "move" in m.rights],
                ami_id=config.ami_id,
                ssh_public_key=config.ssh_public_key,
            ),
        )
        self.database.allow_client("host", self.host.security_group.id)
        self.front.launch(self.host)
        self._monitoring(config, name)
        if config.audit_trail:
            self._trail(config, name)
        if config.backup_retention_days:
            self._backup(config, name)
        self._name_study_roles(config)
        if config.target == "emulator":
            Aspects.of(self).add(emulator.EmulatorAdjustments())
        self._outputs()

    def _front(self, config: OrthwebConfig, name: str) -> Front:
        """The one place the profile is picked: hosts behind a load balancer holding the client
        allow-lists, or the single host behind the site's Elastic IP, admitting the clients itself."""
        network = self.network
        if not config.scaled:
            return ElasticIpFront(
                props=ElasticIpFrontProps(
                    eip=network.site_eip,
                    subnet_id=network.public_subnets[0].id,
                    instance_profile_name=self.access.instance_profile.name,
                    web_client_cidrs=config.web_client_cidrs,
                    dicom_client_cidrs=config.dicom_client_cidrs,
                )
            )
        balancer = LoadBalancer(
            self,
            "balancer",
            props=BalancerProps(
                name=name,
                vpc_id=network.vpc.id,
                subnet_ids=[s.id for s in network.public_subnets],
                first_eip_allocation_id=network.site_eip.allocation_id,
                web_client_cidrs=config.web_client_cidrs,
                dicom_client_cidrs=config.dicom_client_cidrs,
                deletion_protection=config.db_deletion_protection,
            ),
        )
        return BalancedFront(
            balancer,
            props=BalancedFrontProps(
                host_subnet_ids=[s.id for s in network.host_subnets],
                desired=config.hosts,
                maximum=config.hosts_max or config.hosts,
                site_eip=network.site_eip,
                key=self.key,
            ),
        )

    def _monitoring(self, config: OrthwebConfig, name: str) -> None:
        self.monitoring = Monitoring(
            self,
            "monitoring",
            props=MonitoringProps(
                name=name, account=self.account, key_arn=self.key.arn, alarm_email=config.alarm_email
            ),
        )
        # CloudWatch publishes to the encrypted alarm topic; the host's agent reports disk use.
        self.key.allow_alarm_notifications()
        self.access.allow_host_metrics(HOST_METRICS_NAMESPACE)
        self.front.watch(self.monitoring)
        self.monitoring.database(self.database.instance.identifier, config.db_allocated_storage_gb, config.hosts)
        self.monitoring.host_program(self.access.host_log_group.name)
        if config.container_logs:
            self.monitoring.front_door(self.access.log_group.name)
        if config.replication:
            self.monitoring.replication(self.storage.bucket.bucket, self.replica.bucket.bucket, REPLICA_RULE_ID)
        self.monitoring.dashboard()

    def _grants(self) -> None:
        """Each owner grants the host (and Orthanc's role) what they need on its resource."""
        host, orthanc = self.access.role, self.access.orthanc_role
        self.database.grant_master_secret_read("host-master-secret", host)
        self.storage.grant_config_read("host-config", host)
        self.network.grant_s3_ranges_read("host-s3-ranges", host)
        self.storage.grant_dicom_objects("orthanc-dicom", orthanc)
        # The host decrypts its secrets and the boot bundle; Orthanc's role its DICOM objects.
        self.key.grant_use(
            "host", host, actions=["kms:Decrypt", "kms:GenerateDataKey"], via_services=["secretsmanager", "s3"]
        )
        self.key.grant_use("orthanc", orthanc, actions=["kms:Decrypt", "kms:GenerateDataKey"], via_services=["s3"])

    def _name_study_roles(self, config: OrthwebConfig) -> None:
        """The bucket and the key name who may touch the studies: Orthanc's role, replication's, and
        the break-glass roles; IAM alone no longer decides it."""
        named = [self.access.orthanc_role.arn, *config.break_glass_role_arns]
        if config.replication:
            named.append(self.replica.role.arn)
            # The replica's copy: replication and the break-glass roles (Orthanc never reads it).
            self.replica.limit_study_access([self.replica.role.arn, *config.break_glass_role_arns])
        self.storage.limit_dicom_objects(named)
        self.key.limit_study_decrypt(self.storage.bucket.arn, named)

    def _replica(self, config: OrthwebConfig, name: str, retention: Retention) -> None:
        """The DICOM bucket replicated to ``config.replication``; each owner grants the replication role."""
        self.replica = Replica(
            self,
            "replica",
            props=ReplicaProps(
                name=name,
                account=self.account,
                provider=_provider(self, config, alias="replica"),
                region=str(config.replication),
                source_bucket=self.storage.bucket,
                source_versioning=self.storage.versioning["dicom"],
                force_destroy=retention.force_destroy,
                noncurrent_version_expiration_days=config.noncurrent_version_expiration_days,
                log_retention_days=config.retention_days,
                object_lock_days=config.object_lock_days,
            ),
        )
        self.storage.grant_replication_source("replication-source", self.replica.role)
        # S3 reads the source objects with the site key, only through S3 in the site's region.
        self.key.grant_use("replication", self.replica.role, actions=["kms:Decrypt"], via_services=["s3"])

    def _name(self, config: OrthwebConfig) -> str:
        if not config.unique_suffix:
            return config.name
        # Imported only when asked for: the random provider is not needed (or available) otherwise.
        from cdktf_cdktf_provider_random.id import Id
        from cdktf_cdktf_provider_random.provider import RandomProvider

        RandomProvider(self, "random")
        suffix = Id(self, "name-suffix", byte_length=NAME_SUFFIX_BYTES)
        return f"{config.name}-{suffix.hex}"

    def _trail(self, config: OrthwebConfig, name: str) -> None:
        self.trail = DataEventTrail(
            self,
            "trail",
            props=TrailProps(
                name=name,
                account=self.account,
                key_arn=self.key.arn,
                log_bucket_name=self.storage.log_bucket.bucket,
                dicom_bucket_arn=self.storage.bucket.arn,
                log_retention_days=config.retention_days,
                # CreateTrail checks the log bucket's policy when it runs (the grant below adds the
                # trail's statement to it): the trail is made after the policy.
                delivery_policies=[self.storage.log_bucket_policy],
            ),
        )
        # Each owner grants the trail what it needs on its own resource.
        self.key.allow_cloudtrail()
        self.storage.allow_trail_delivery(self.trail.key_prefix)

    def _backup(self, config: OrthwebConfig, name: str) -> None:
        self.backup = DatabaseBackup(
            self,
            "backup",
            props=BackupProps(
                name=name,
                account=self.account,
                key_arn=self.key.arn,
                database_arn=self.database.instance.arn,
                retention_days=config.backup_retention_days,
            ),
        )

    def _host_values(self, config: OrthwebConfig) -> HostValues:
        return HostValues(
            region=self.account.region,
            bucket=self.storage.bucket.bucket,
            admin_secret_arn=self.access.admin_secret.arn,
            tls_secret_arn=self.access.tls_secret.arn,
            ca_secret_arn=self.access.ca_secret.arn,
            ca_cert_secret_arn=self.access.ca_cert_secret.arn,
            users_secret_arn=self.access.users_secret.arn,
            clients_secret_arn=self.access.clients_secret.arn,
            db_secret_arn=self.database.secret_arn,
            db_host=self.database.instance.address,
            db_port=str(POSTGRES_PORT),
            db_name=DB_NAME,
            site_dns=self.front.site_dns,
            site_ip=self.network.site_eip.public_ip,
            site_extra_names=" ".join(self.front.extra_names),
            site_mode=self.front.site_mode,
            name=self.name,
            log_group=self.access.log_group.name,
            host_log_group=self.access.host_log_group.name,
            orthanc_role_arn=self.access.orthanc_role.arn,
            config_bucket=self.storage.config_bucket.bucket,
            site_name=config.site_name,
            byo_tls_secret=config.tls_certificate_secret,
            dicom_client_auth=config.dicom_client_auth,
            vpc_cidr=config.vpc_cidr,
            s3_prefix_list=self.network.s3_ranges.id,
        )

    def _app_values(self, config: OrthwebConfig) -> AppValues:
        return AppValues(
            ae_title=config.ae_title,
            modalities=config.dicom_modalities,
            orthanc_image=config.orthanc_image,
            nginx_image=config.nginx_image,
            container_logs=config.container_logs,
            region_name=config.region,
            dicom_client_auth=config.dicom_client_auth,
            several_servers=self.front.several_hosts,
            modality_ca=config.modality_ca,
        )

    def _outputs(self) -> None:
        db, region = self.database.instance, self.account.region
        document = self.access.session_document.name
        dns, hosts = self.front.site_dns, self.front.hosts(region)
        outputs = {
            "hostinfo": (hosts.summary, "The host(s) and how to open a shell on one"),
            "dbinfo": (f"{db.address}:{db.port}", "PostgreSQL endpoint:port of the study index"),
            "s3bucket": (self.storage.bucket.bucket_domain_name, "Domain name of the DICOM bucket"),
            "bucket_name": (self.storage.bucket.bucket, "Name of the DICOM bucket (for aws s3 and the validator)"),
            "site_url": (f"https://{dns}", "Orthanc web UI and REST API"),
            "dicom_endpoint": (f"{dns}:{DICOM_TLS_PORT}", "DICOM TLS endpoint (host:port)"),
            "db_secret_arn": (self.database.secret_arn, "RDS-managed master secret in Secrets Manager"),
            "ssm_session_command": (
                f"aws ssm start-session --target {hosts.first_host} --region {region} --document-name {document}",
                "Shell on a host without SSH (logged, encrypted; needs the session-manager plugin)",
            ),
            "operator_policy_arn": (
                self.access.operator_policy.arn,
                "IAM policy for the site's operators: shells on its hosts, the database tunnel; logged sessions only",
            ),
            # What `make validate` and the operator commands need; names and ARNs, never a value.
            "region": (region, "The site's AWS region"),
            "ae_title": (self.config.ae_title, "Called AE title of the site"),
            "admin_secret": (self.access.admin_secret.arn, "Secret holding the Orthanc admin password"),
            "users_secret": (self.access.users_secret.arn, "Secret holding the named users (make user)"),
            "ca_secret": (
                # Empty with your own certificate, unless a modality reached over DICOM TLS must trust the site CA.
                ""
                if self.config.tls_certificate_secret and not any(m.tls for m in self.config.dicom_modalities)
                else self.access.ca_cert_secret.arn,
                "Secret whose ca_cert clients trust (empty: your own, publicly trusted certificate)",
            ),
            "dashboard": (
                f"https://console.aws.amazon.com/cloudwatch/home?region={region}#dashboards:name="
                f"{self.monitoring.board.dashboard_name}",
                "The site's CloudWatch dashboard",
            ),
        }
        outputs |= self.front.outputs()
        if self.config.replication:
            outputs["replica_bucket"] = (
                self.replica.bucket.bucket,
                f"Name of the DICOM replica bucket in {self.config.replication}",
            )
        for output_name, (value, description) in outputs.items():
            TerraformOutput(self, output_name, value=value, description=description)
