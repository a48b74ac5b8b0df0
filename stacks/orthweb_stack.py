"""The single-host Orthweb site: one stack wiring the modules together.

What a deletion keeps (``allow_data_destroy``) and what the environment means (``prod`` keeps
automated backups and applies database changes in the maintenance window) is decided here once and
handed to the constructs as plain settings. Cross-construct permissions are granted by the
construct that owns the resource.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cdktf import TerraformOutput, TerraformStack
from cdktf_cdktf_provider_aws.provider import AwsProvider, AwsProviderDefaultTags, AwsProviderEndpoints
from constructs import Construct

from config.facts import DB_NAME, DICOM_TLS_PORT, POSTGRES_PORT
from config.inputs import OrthwebConfig
from modules.access import HostAccess, HostAccessProps
from modules.account import Account
from modules.audit import BackupProps, DatabaseBackup, DataEventTrail, TrailProps
from modules.database import Database, DatabaseProps
from modules.host import Host, HostProps
from modules.key import SiteKey, SiteKeyProps
from modules.network import Network, NetworkProps
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


def _provider(stack: TerraformStack, config: OrthwebConfig) -> AwsProvider:
    default_tags = [AwsProviderDefaultTags(tags=config.tag_map)]
    if config.target != "emulator":
        return AwsProvider(stack, "aws", region=config.region, default_tags=default_tags)
    settings = emulator.provider_settings(config.emulator_endpoint)
    settings["endpoints"] = [AwsProviderEndpoints(**e) for e in settings["endpoints"]]
    return AwsProvider(stack, "aws", region=config.region, default_tags=default_tags, **settings)


class OrthwebStack(TerraformStack):
    """Network, key, storage, database, host access and host of one Orthweb site, with its outputs."""

    def __init__(self, scope: Construct, id_: str, *, config: OrthwebConfig):
        super().__init__(scope, id_)
        self.config = config
        _provider(self, config)
        name = self._name(config)
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
                key_arn=self.key.arn,
                log_retention_days=config.log_retention_days,
                interface_endpoints=config.interface_endpoints,
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
                log_retention_days=config.log_retention_days,
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
                log_retention_days=config.log_retention_days,
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
                log_retention_days=config.log_retention_days,
                recovery_window_days=retention.recovery_window_days,
                byo_tls_secret=config.tls_certificate_secret,
            ),
        )
        self._grants()
        bundle = build_bundle(self._app_values(config))
        self.host = Host(
            self,
            "host",
            props=HostProps(
                name=name,
                vpc_id=self.network.vpc.id,
                subnet_id=self.network.public_subnets[0].id,
                instance_type=config.instance_type,
                instance_profile_arn=self.access.instance_profile.arn,
                instance_profile_name=self.access.instance_profile.name,
                key_arn=self.key.arn,
                root_volume_gb=config.root_volume_gb,
                web_client_cidrs=config.web_client_cidrs,
                dicom_client_cidrs=config.dicom_client_cidrs,
                user_data=render_user_data(self._host_values(config), bundle),
                eip_allocation_id=self.network.site_eip.allocation_id,
                bundle_data_base64=base64.b64encode(bundle.data).decode(),
                bundle_key=bundle.key,
                config_bucket=self.storage.config_bucket.id,
                move_destinations=[(m.host, m.port) for m in config.dicom_modalities if "move" in m.rights],
                ami_id=config.ami_id,
                ssh_public_key=config.ssh_public_key,
            ),
        )
        self.database.allow_client("host", self.host.security_group.id)
        if config.cloudtrail:
            self._trail(config, name)
        if config.backup_retention_days:
            self._backup(config, name)
        if config.target == "emulator":
            emulator.adapt_host(self.host)
            emulator.adapt_storage(self.storage)
        self._outputs()

    def _grants(self) -> None:
        """Each owner grants the host (and Orthanc's role) what they need on its resource."""
        host, orthanc = self.access.role, self.access.orthanc_role
        self.database.grant_master_secret_read("host-master-secret", host)
        self.storage.grant_config_read("host-config", host)
        self.storage.grant_dicom_objects("orthanc-dicom", orthanc)
        # The host decrypts its secrets and the boot bundle; Orthanc's role its DICOM objects.
        self.key.grant_use(
            "host", host, actions=["kms:Decrypt", "kms:GenerateDataKey"], via_services=["secretsmanager", "s3"]
        )
        self.key.grant_use("orthanc", orthanc, actions=["kms:Decrypt", "kms:GenerateDataKey"], via_services=["s3"])

    def _name(self, config: OrthwebConfig) -> str:
        if not config.unique_suffix:
            return config.name
        # Imported only when asked for: the random provider is not needed (or available) otherwise.
        from cdktf_cdktf_provider_random.id import Id
        from cdktf_cdktf_provider_random.provider import RandomProvider

        RandomProvider(self, "random")
        suffix = Id(self, "name-suffix", byte_length=3)
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
                log_retention_days=config.log_retention_days,
            ),
        )
        # Each owner grants the trail what it needs on its own resource.
        self.key.allow_cloudtrail()
        self.storage.allow_trail_delivery(self.trail.key_prefix)
        self.trail.trail.node.add_dependency(self.storage.log_bucket_policy)

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
        eip = self.network.site_eip
        return HostValues(
            region=self.account.region,
            bucket=self.storage.bucket.bucket,
            admin_secret_arn=self.access.admin_secret.arn,
            tls_secret_arn=self.access.tls_secret.arn,
            ca_secret_arn=self.access.ca_secret.arn,
            clients_secret_arn=self.access.clients_secret.arn,
            db_secret_arn=self.database.secret_arn,
            db_host=self.database.instance.address,
            db_port=str(POSTGRES_PORT),
            db_name=DB_NAME,
            site_dns=eip.public_dns,
            site_ip=eip.public_ip,
            log_group=self.access.log_group.name,
            orthanc_role_arn=self.access.orthanc_role.arn,
            config_bucket=self.storage.config_bucket.bucket,
            site_name=config.site_name,
            byo_tls_secret=config.tls_certificate_secret,
            dicom_client_auth=config.dicom_client_auth,
        )

    @staticmethod
    def _app_values(config: OrthwebConfig) -> AppValues:
        return AppValues(
            ae_title=config.ae_title,
            modalities=config.dicom_modalities,
            orthanc_image=config.orthanc_image,
            nginx_image=config.nginx_image,
            container_logs=config.container_logs,
            region_name=config.region,
            dicom_client_auth=config.dicom_client_auth,
        )

    def _outputs(self) -> None:
        dns = self.network.site_eip.public_dns
        db = self.database.instance
        outputs = {
            "hostinfo": (f"ec2-user@{dns}", "SSH-style login of the host (use SSM Session Manager)"),
            "dbinfo": (f"{db.address}:{db.port}", "PostgreSQL endpoint:port of the study index"),
            "s3bucket": (self.storage.bucket.bucket_domain_name, "Domain name of the DICOM bucket"),
            "site_url": (f"https://{dns}", "Orthanc web UI and REST API"),
            "dicom_endpoint": (f"{dns}:{DICOM_TLS_PORT}", "DICOM TLS endpoint (host:port)"),
            "db_secret_arn": (self.database.secret_arn, "RDS-managed master secret in Secrets Manager"),
            "ssm_session_command": (
                f"aws ssm start-session --target {self.host.instance.id} --region {self.account.region}"
                f" --document-name {self.access.session_document.name}",
                "Shell on the host without SSH (logged, encrypted)",
            ),
        }
        for output_name, (value, description) in outputs.items():
            TerraformOutput(self, output_name, value=value, description=description)
