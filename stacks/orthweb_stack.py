"""The single-host Orthweb site: one stack wiring the modules together."""

from __future__ import annotations

from cdktf import TerraformOutput, TerraformStack
from cdktf_cdktf_provider_aws.provider import AwsProvider, AwsProviderDefaultTags, AwsProviderEndpoints
from constructs import Construct

from modules.access import HostAccess, HostAccessProps
from modules.account import Account
from modules.audit import BackupProps, DatabaseBackup, DataEventTrail, TrailProps
from modules.database import DB_NAME, POSTGRES_PORT, Database, DatabaseProps
from modules.host import DICOM_TLS_PORT, Host, HostProps
from modules.key import SiteKey, SiteKeyProps
from modules.network import Network, NetworkProps
from modules.storage import Storage, StorageProps
from stacks.config import OrthwebConfig
from userdata import HostValues, render_user_data

# Services the stack calls; the emulator target points each at the loopback emulator.
EMULATED_SERVICES = ("ec2", "s3", "rds", "iam", "kms", "secretsmanager", "sts", "cloudwatchlogs", "ssm", "cloudwatch")
# Not credentials: the emulator accepts any key; these only keep the provider from looking for real ones.
EMULATOR_ACCESS_KEY = "emulator-placeholder"


def emulator_provider_settings(endpoint: str) -> dict:
    """AWS provider settings that send every call to the emulator (provider argument names)."""
    return {
        "access_key": EMULATOR_ACCESS_KEY,
        "secret_key": EMULATOR_ACCESS_KEY,
        "skip_credentials_validation": True,
        "skip_requesting_account_id": True,
        "skip_metadata_api_check": "true",
        "skip_region_validation": True,
        "s3_use_path_style": True,
        "endpoints": [{service: endpoint for service in EMULATED_SERVICES}],
    }


def _provider(stack: TerraformStack, config: OrthwebConfig) -> AwsProvider:
    default_tags = [AwsProviderDefaultTags(tags=config.tag_map)]
    if config.target != "emulator":
        return AwsProvider(stack, "aws", region=config.region, default_tags=default_tags)
    settings = emulator_provider_settings(config.emulator_endpoint)
    settings["endpoints"] = [AwsProviderEndpoints(**e) for e in settings["endpoints"]]
    return AwsProvider(stack, "aws", region=config.region, default_tags=default_tags, **settings)


class OrthwebStack(TerraformStack):
    """Network, key, storage, database, host access and host of one Orthweb site, with its outputs."""

    def __init__(self, scope: Construct, id_: str, *, config: OrthwebConfig):
        super().__init__(scope, id_)
        self.config = config
        _provider(self, config)
        name = self._name(config)
        account = Account(self, "account")
        self.key = SiteKey(
            self, "key", props=SiteKeyProps(name=name, account=account, allow_cloudtrail=config.cloudtrail)
        )
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
                force_destroy=not config.is_prod,
                noncurrent_version_expiration_days=config.noncurrent_version_expiration_days,
                log_retention_days=config.log_retention_days,
                intelligent_tiering=config.intelligent_tiering,
                object_lock_days=config.object_lock_days,
                cloudtrail=config.cloudtrail,
            ),
        )
        self.database = Database(
            self,
            "database",
            props=DatabaseProps(
                name=name,
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
                partition=account.partition,
                prod=config.is_prod,
            ),
        )
        self.access = HostAccess(
            self,
            "access",
            props=HostAccessProps(
                name=name,
                account=account,
                key_arn=self.key.arn,
                bucket_arn=self.storage.bucket.arn,
                db_secret_arn=self.database.secret_arn,
                log_retention_days=config.log_retention_days,
                prod=config.is_prod,
                byo_tls_secret=config.tls_certificate_secret,
            ),
        )
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
                # The AWS API emulator does not implement MonitorInstances; the template still asks for it.
                instance_monitoring=config.target != "emulator",
                key_arn=self.key.arn,
                root_volume_gb=config.root_volume_gb,
                web_client_cidrs=config.web_client_cidrs,
                dicom_client_cidrs=config.dicom_client_cidrs,
                user_data=render_user_data(self._host_values(config, account)),
                eip_allocation_id=self.network.site_eip.allocation_id,
                ami_id=config.ami_id,
                ssh_public_key=config.ssh_public_key,
            ),
        )
        self.database.allow_client("host", self.host.security_group.id)
        self._optional_extras(config, name, account)
        self._outputs(account)

    def _name(self, config: OrthwebConfig) -> str:
        if not config.unique_suffix:
            return config.name
        # Imported only when asked for: the random provider is not needed (or available) otherwise.
        from cdktf_cdktf_provider_random.id import Id
        from cdktf_cdktf_provider_random.provider import RandomProvider

        RandomProvider(self, "random")
        suffix = Id(self, "name-suffix", byte_length=3)
        return f"{config.name}-{suffix.hex}"

    def _optional_extras(self, config: OrthwebConfig, name: str, account: Account) -> None:
        if config.cloudtrail:
            self.trail = DataEventTrail(
                self,
                "trail",
                props=TrailProps(
                    name=name,
                    account=account,
                    key_arn=self.key.arn,
                    log_bucket_name=self.storage.log_bucket.bucket,
                    dicom_bucket_arn=self.storage.bucket.arn,
                    log_retention_days=config.log_retention_days,
                ),
            )
            self.trail.trail.node.add_dependency(self.storage.log_bucket_policy)
        if config.backup_retention_days:
            self.backup = DatabaseBackup(
                self,
                "backup",
                props=BackupProps(
                    name=name,
                    key_arn=self.key.arn,
                    database_arn=self.database.instance.arn,
                    retention_days=config.backup_retention_days,
                    partition=account.partition,
                ),
            )

    def _host_values(self, config: OrthwebConfig, account: Account) -> HostValues:
        eip = self.network.site_eip
        return HostValues(
            region=account.region,
            bucket=self.storage.bucket.bucket,
            admin_secret_arn=self.access.admin_secret.arn,
            tls_secret_arn=self.access.tls_secret.arn,
            db_secret_arn=self.database.secret_arn,
            db_host=self.database.instance.address,
            db_port=str(POSTGRES_PORT),
            db_name=DB_NAME,
            site_dns=eip.public_dns,
            site_ip=eip.public_ip,
            log_group=self.access.log_group.name,
            ae_title=config.ae_title,
            site_name=config.site_name,
            byo_tls_secret=config.tls_certificate_secret,
            region_name=config.region,
            modalities=config.dicom_modalities,
            orthanc_image=config.orthanc_image,
            nginx_image=config.nginx_image,
            container_logs=config.container_logs,
        )

    def _outputs(self, account: Account) -> None:
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
                f"aws ssm start-session --target {self.host.instance.id} --region {account.region}",
                "Shell on the host without SSH",
            ),
        }
        for name, (value, description) in outputs.items():
            TerraformOutput(self, name, value=value, description=description)
