"""RDS PostgreSQL: Orthanc's study index."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cdktf_cdktf_provider_aws.db_instance import DbInstance
from cdktf_cdktf_provider_aws.db_parameter_group import DbParameterGroup, DbParameterGroupParameter
from cdktf_cdktf_provider_aws.db_subnet_group import DbSubnetGroup
from cdktf_cdktf_provider_aws.iam_role import IamRole
from cdktf_cdktf_provider_aws.security_group import SecurityGroup
from cdktf_cdktf_provider_aws.vpc_security_group_egress_rule import VpcSecurityGroupEgressRule
from cdktf_cdktf_provider_aws.vpc_security_group_ingress_rule import VpcSecurityGroupIngressRule
from constructs import Construct

from config.facts import DB_MASTER_USER, DB_NAME, POSTGRES_PORT
from modules.account import Account
from modules.logs import encrypted_log_group
from modules.policy import Statement, grant, service_role

# Major version only, with automatic minor upgrades: RDS applies security patches itself and
# Terraform accepts the prefix, so a minor upgrade by AWS causes no perpetual diff.
POSTGRES_ENGINE_VERSION = "17"
POSTGRES_PARAMETER_FAMILY = "postgres17"
# Named explicitly (it is also RDS's default today) so the host's embedded CA always matches.
CA_CERT_IDENTIFIER = "rds-ca-rsa2048-g1"
# Server and upgrade logs only: with the settings below they carry no statement text.
EXPORTED_LOGS = ("postgresql", "upgrade")
ENHANCED_MONITORING_SECONDS = 60
ENHANCED_MONITORING_POLICY = "AmazonRDSEnhancedMonitoringRole"
# Performance Insights keeps 7 days at no charge.
PERFORMANCE_INSIGHTS_FREE_DAYS = 7
# No statement text in server logs: statements carry patient names and IDs (PHI).
NO_PHI_LOGGING = {
    "rds.force_ssl": "1",
    "log_statement": "none",
    "log_min_duration_statement": "-1",
    "log_min_error_statement": "panic",
    "log_connections": "1",
    "log_disconnections": "1",
}


# UTC. The automated backup, then AWS Backup's snapshot (BACKUP_SCHEDULE, 05:00 with an hour to
# start); maintenance on Sunday after both.
DB_BACKUP_WINDOW = "03:00-03:30"
DB_MAINTENANCE_WINDOW = "sun:06:30-sun:07:30"


@dataclass(frozen=True)
class DatabaseProps:
    name: str
    account: Account
    vpc_id: str
    subnet_ids: Sequence[str]
    key_arn: str
    instance_class: str
    allocated_storage_gb: int
    max_allocated_storage_gb: int
    multi_az: bool
    backup_retention_days: int
    deletion_protection: bool
    log_retention_days: int
    # Names as terraform-aws-rds users know them; the stack decides them from the environment.
    skip_final_snapshot: bool
    final_snapshot_identifier: str | None
    delete_automated_backups: bool
    apply_immediately: bool


class Database(Construct):
    """An encrypted RDS PostgreSQL instance in private subnets.

    Secure defaults: storage and the master secret encrypted with the site key; the master password
    generated and kept by RDS in Secrets Manager (never in Terraform state); TLS forced
    (``rds.force_ssl``); no statement logging; not publicly accessible; no ingress until a client
    security group is allowed; backups kept 7+ days with tags copied to snapshots; deletion
    protection on; Performance Insights and exported logs encrypted with the site key; enhanced
    monitoring. Final snapshot and backup retention on deletion as the stack decides.
    """

    def __init__(self, scope: Construct, id_: str, *, props: DatabaseProps):
        super().__init__(scope, id_)
        self.props = props
        self._network_and_parameters()
        self._logs_and_monitoring()
        self._instance()

    def _network_and_parameters(self) -> None:
        props = self.props
        self.security_group = SecurityGroup(
            self,
            "sg",
            name=f"{props.name}-db",
            vpc_id=props.vpc_id,
            description="PostgreSQL from the Orthanc host only",
        )
        self.subnet_group = DbSubnetGroup(self, "subnets", name=f"{props.name}-db", subnet_ids=list(props.subnet_ids))
        self.parameter_group = DbParameterGroup(
            self,
            "parameters",
            name=f"{props.name}-pg17",
            family=POSTGRES_PARAMETER_FAMILY,
            description="TLS only, no statement logging",
            parameter=[
                DbParameterGroupParameter(
                    name=k, value=v, apply_method="pending-reboot" if k == "rds.force_ssl" else "immediate"
                )
                for k, v in NO_PHI_LOGGING.items()
            ],
        )

    def _logs_and_monitoring(self) -> None:
        props = self.props
        # RDS writes exported logs into these groups when they exist: encrypted, with finite retention.
        self.log_groups = {
            log: encrypted_log_group(
                self,
                f"{log}-logs",
                name=f"/aws/rds/instance/{props.name}-db/{log}",
                key_arn=props.key_arn,
                retention_days=props.log_retention_days,
            )
            for log in EXPORTED_LOGS
        }
        self.monitoring_role = service_role(
            self,
            "monitoring",
            name=f"{props.name}-rds-monitoring",
            service="monitoring.rds.amazonaws.com",
            # Only RDS acting for this account may assume it (confused-deputy protection).
            conditions=[("StringEquals", "aws:SourceAccount", [props.account.account_id])],
            managed_policy_arns=[
                f"arn:{props.account.partition}:iam::aws:policy/service-role/{ENHANCED_MONITORING_POLICY}"
            ],
        )

    def _instance(self) -> None:
        props = self.props
        self.instance = DbInstance(
            self,
            "db",
            identifier=f"{props.name}-db",
            engine="postgres",
            engine_version=POSTGRES_ENGINE_VERSION,
            auto_minor_version_upgrade=True,
            instance_class=props.instance_class,
            allocated_storage=props.allocated_storage_gb,
            max_allocated_storage=props.max_allocated_storage_gb,
            storage_type="gp3",
            storage_encrypted=True,
            kms_key_id=props.key_arn,
            db_name=DB_NAME,
            username=DB_MASTER_USER,
            manage_master_user_password=True,
            master_user_secret_kms_key_id=props.key_arn,
            port=POSTGRES_PORT,
            ca_cert_identifier=CA_CERT_IDENTIFIER,
            db_subnet_group_name=self.subnet_group.name,
            parameter_group_name=self.parameter_group.name,
            vpc_security_group_ids=[self.security_group.id],
            publicly_accessible=False,
            multi_az=props.multi_az,
            iam_database_authentication_enabled=True,
            backup_retention_period=props.backup_retention_days,
            # Stated, not left to AWS (which picks 30 minutes anywhere in an 8-hour block of the
            # region): the daily AWS Backup job (modules/audit.py) starts after this window ends, and
            # changes wait for the maintenance window, which must not overlap it.
            backup_window=DB_BACKUP_WINDOW,
            maintenance_window=DB_MAINTENANCE_WINDOW,
            copy_tags_to_snapshot=True,
            deletion_protection=props.deletion_protection,
            performance_insights_enabled=True,
            performance_insights_kms_key_id=props.key_arn,
            performance_insights_retention_period=PERFORMANCE_INSIGHTS_FREE_DAYS,
            monitoring_interval=ENHANCED_MONITORING_SECONDS,
            monitoring_role_arn=self.monitoring_role.arn,
            enabled_cloudwatch_logs_exports=list(EXPORTED_LOGS),
            depends_on=list(self.log_groups.values()),
            skip_final_snapshot=props.skip_final_snapshot,
            final_snapshot_identifier=props.final_snapshot_identifier,
            delete_automated_backups=props.delete_automated_backups,
            apply_immediately=props.apply_immediately,
        )
        # Stateful: renaming this logical ID would make Terraform destroy the study index.
        self.instance.override_logical_id("database")
        self.secret_arn = self.instance.master_user_secret.get(0).secret_arn

    def grant_master_secret_read(self, id_: str, role: IamRole) -> None:
        """Let ``role`` read the RDS-managed master secret (the host creates the app role with it)."""
        grant(
            self,
            id_,
            role,
            [
                Statement(
                    sid="ReadMasterSecret",
                    actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                    resources=[self.secret_arn],
                )
            ],
            "read-db-master-secret",
        )

    def allow_client(self, id_: str, client_security_group_id: str) -> None:
        """Open the PostgreSQL port to one security group (never a CIDR), and let that group reach the database."""
        VpcSecurityGroupIngressRule(
            self,
            f"{id_}-in",
            security_group_id=self.security_group.id,
            ip_protocol="tcp",
            from_port=POSTGRES_PORT,
            to_port=POSTGRES_PORT,
            referenced_security_group_id=client_security_group_id,
            description="PostgreSQL from the Orthanc host",
        )
        VpcSecurityGroupEgressRule(
            self,
            f"{id_}-out",
            security_group_id=client_security_group_id,
            ip_protocol="tcp",
            from_port=POSTGRES_PORT,
            to_port=POSTGRES_PORT,
            referenced_security_group_id=self.security_group.id,
            description="PostgreSQL to the database",
        )
