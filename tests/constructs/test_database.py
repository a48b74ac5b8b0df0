"""The database alone: explicit deletion settings pass through; access only through allow_client()."""

from __future__ import annotations

from cdktf_cdktf_provider_aws.db_instance import DbInstance
from cdktf_cdktf_provider_aws.db_parameter_group import DbParameterGroup
from cdktf_cdktf_provider_aws.vpc_security_group_ingress_rule import VpcSecurityGroupIngressRule

from config.facts import POSTGRES_PORT
from modules.database import NO_PHI_LOGGING, Database, DatabaseProps


def props(account, **overrides) -> DatabaseProps:
    values = dict(
        name="site",
        account=account,
        vpc_id="vpc-1",
        subnet_ids=["subnet-a", "subnet-b"],
        key_arn="arn:aws:kms:us-east-1:123456789012:key/test",
        instance_class="db.t4g.small",
        allocated_storage_gb=20,
        max_allocated_storage_gb=100,
        multi_az=False,
        backup_retention_days=7,
        deletion_protection=True,
        log_retention_days=365,
        skip_final_snapshot=False,
        final_snapshot_identifier="site-db-final",
        delete_automated_backups=False,
        apply_immediately=False,
    )
    return DatabaseProps(**{**values, **overrides})


def test_deletion_settings_are_the_ones_given(build):
    built = build(lambda stack, account: Database(stack, "database", props=props(account)))
    assert built.has(
        DbInstance.TF_RESOURCE_TYPE,
        {
            "skip_final_snapshot": False,
            "final_snapshot_identifier": "site-db-final",
            "delete_automated_backups": False,
            "apply_immediately": False,
            "deletion_protection": True,
            "manage_master_user_password": True,
            "port": POSTGRES_PORT,
        },
    )
    dev = build(
        lambda stack, account: Database(
            stack,
            "database",
            props=props(account, skip_final_snapshot=True, final_snapshot_identifier=None, apply_immediately=True),
        )
    )
    instance = dev.resources(DbInstance.TF_RESOURCE_TYPE)["database"]
    assert instance["skip_final_snapshot"] is True and "final_snapshot_identifier" not in instance


def test_no_ingress_until_a_client_is_allowed(build):
    closed = build(lambda stack, account: Database(stack, "database", props=props(account)))
    assert not closed.has(VpcSecurityGroupIngressRule.TF_RESOURCE_TYPE)

    def with_client(stack, account):
        Database(stack, "database", props=props(account)).allow_client("app", "sg-app")

    opened = build(with_client)
    assert opened.has(
        VpcSecurityGroupIngressRule.TF_RESOURCE_TYPE,
        {"from_port": POSTGRES_PORT, "to_port": POSTGRES_PORT, "referenced_security_group_id": "sg-app"},
    )
    rule = next(iter(opened.resources(VpcSecurityGroupIngressRule.TF_RESOURCE_TYPE).values()))
    assert "cidr_ipv4" not in rule


def test_tls_is_forced_at_the_next_reboot(build):
    built = build(lambda stack, account: Database(stack, "database", props=props(account)))
    expected = [
        {"name": name, "value": value, "apply_method": "pending-reboot" if name == "rds.force_ssl" else "immediate"}
        for name, value in NO_PHI_LOGGING.items()
    ]
    assert built.has(DbParameterGroup.TF_RESOURCE_TYPE, {"parameter": expected})
    assert {"name": "rds.force_ssl", "value": "1", "apply_method": "pending-reboot"} in expected
