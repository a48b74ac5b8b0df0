"""Per-module assertions on the synthesized default and prod stacks: the properties that carry
security or durability, and outputs with their exact names."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from config.facts import DICOM_TLS_PORT, HTTPS_PORT, POSTGRES_PORT
from modules.database import POSTGRES_ENGINE_VERSION
from modules.host import AL2023_AMI_PARAMETER
from tools.profiles import PROD


def statements(stack, rtype_id_fragment: str) -> list[dict]:
    docs = [d for k, d in stack.data_sources("aws_iam_policy_document").items() if rtype_id_fragment in k]
    assert docs, f"no policy document matching {rtype_id_fragment}"
    return [s for d in docs for s in d["statement"]]


def test_key_rotation_and_logs_statement(default_stack):
    key = default_stack.resources("aws_kms_key")["site_key"]
    assert key["enable_key_rotation"] is True
    assert key["deletion_window_in_days"] == 30
    policy = json.loads(key["policy"])
    logs = [s for s in policy["Statement"] if s.get("Sid") == "CloudWatchLogsUse"]
    assert logs and logs[0]["Principal"]["Service"].startswith("logs.")
    assert list(logs[0]["Condition"]["ArnLike"]) == ["kms:EncryptionContext:aws:logs:arn"]
    assert all(a != "kms:*" for s in policy["Statement"] for a in s["Action"])


def test_every_encrypted_resource_uses_the_site_key(default_stack):
    key_ref = "${aws_kms_key.site_key.arn}"
    assert default_stack.one("aws_db_instance")["kms_key_id"] == key_ref
    assert default_stack.one("aws_db_instance")["master_user_secret_kms_key_id"] == key_ref
    for group in default_stack.resources("aws_cloudwatch_log_group").values():
        assert group["kms_key_id"] == key_ref
    for secret in default_stack.resources("aws_secretsmanager_secret").values():
        assert secret["kms_key_id"] == key_ref
    ebs = default_stack.one("aws_launch_template")["block_device_mappings"][0]["ebs"]
    assert ebs["encrypted"] == "true" and ebs["kms_key_id"] == key_ref and ebs["volume_type"] == "gp3"
    sse = {
        k: v["rule"][0]
        for k, v in default_stack.resources("aws_s3_bucket_server_side_encryption_configuration").items()
    }
    dicom = next(v for k, v in sse.items() if "dicom" in k)
    assert dicom["apply_server_side_encryption_by_default"] == {
        "sse_algorithm": "aws:kms",
        "kms_master_key_id": key_ref,
    }
    assert dicom["bucket_key_enabled"] is True


def test_network_layout(default_stack, synth_profile):
    vpc = default_stack.one("aws_vpc")
    assert vpc["cidr_block"] == "172.17.0.0/16"
    subnets = default_stack.resources("aws_subnet").values()
    cidrs = sorted(s["cidr_block"] for s in subnets)
    assert cidrs == ["172.17.0.0/20", "172.17.128.0/20", "172.17.144.0/20", "172.17.16.0/20"]
    assert all(s["map_public_ip_on_launch"] is False for s in subnets)
    default_sg = default_stack.one("aws_default_security_group")
    assert default_sg["ingress"] == [] and default_sg["egress"] == []
    route = default_stack.one("aws_route")
    assert route["destination_cidr_block"] == "0.0.0.0/0" and "aws_internet_gateway" in route["gateway_id"]
    assert "route" not in json.dumps(default_stack.resources("aws_route_table")).replace("route_table", "")
    s3 = default_stack.one("aws_vpc_endpoint")
    assert s3["vpc_endpoint_type"] == "Gateway" and len(s3["route_table_ids"]) == 2
    flow = default_stack.one("aws_flow_log")
    assert flow["traffic_type"] == "ALL"
    az3 = synth_profile("az3")
    assert len(az3.resources("aws_subnet")) == 6
    assert {e["service_name"].rsplit(".", 1)[1] for e in az3.resources("aws_vpc_endpoint").values()} == {
        "s3",
        "ssm",
        "secretsmanager",
    }


def test_one_az_still_gives_rds_two_subnets(tmp_path):
    from config.inputs import OrthwebConfig
    from tests.conftest import synth_json

    data = synth_json(OrthwebConfig(az_count=1), tmp_path)
    subnets = data["resource"]["aws_subnet"].values()
    assert sum(s["tags"]["Tier"] == "public" for s in subnets) == 1
    group = next(iter(data["resource"]["aws_db_subnet_group"].values()))
    assert len(group["subnet_ids"]) == 2


def test_buckets_are_private_versioned_tls_only(default_stack, prod_stack):
    for pab in default_stack.resources("aws_s3_bucket_public_access_block").values():
        assert all(
            pab[k] is True
            for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
        )
    assert len(default_stack.resources("aws_s3_bucket_public_access_block")) == 3
    for versioning in default_stack.resources("aws_s3_bucket_versioning").values():
        assert versioning["versioning_configuration"]["status"] == "Enabled"
    for name in ("dicom", "log", "config"):
        bucket_policy = next(p for k, p in default_stack.resources("aws_s3_bucket_policy").items() if name in k)
        deny = [s for s in json.loads(bucket_policy["policy"])["Statement"] if s["Effect"] == "Deny"]
        assert deny and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert deny[0]["Principal"] == {"AWS": "*"} and deny[0]["Action"] == "s3:*"
    for name in ("dicom", "config"):
        # Writes under another key, SSE-S3 or a key the client brings (SSE-C) are refused.
        bucket_policy = next(p for k, p in default_stack.resources("aws_s3_bucket_policy").items() if name in k)
        denied = {s["Sid"]: s for s in json.loads(bucket_policy["policy"])["Statement"] if s["Effect"] == "Deny"}
        assert denied["DenyOtherKeys"]["Condition"] == {
            "StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption-aws-kms-key-id": "${aws_kms_key.site_key.arn}"}
        }
        assert denied["DenyOtherEncryption"]["Condition"] == {
            "StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption": "aws:kms"}
        }
        assert denied["DenyCustomerKeys"]["Condition"] == {
            "Null": {"s3:x-amz-server-side-encryption-customer-algorithm": "false"}
        }
    for logging in default_stack.resources("aws_s3_bucket_logging").values():
        assert logging["target_bucket"] == "${aws_s3_bucket.log_bucket.id}"
        # S3 refuses to switch logging on before the log bucket's policy admits the logging service.
        assert any(dep.startswith("aws_s3_bucket_policy.storage_log-policy") for dep in logging["depends_on"])
    # A routine destroy keeps the images, in every environment, unless allow_data_destroy says otherwise.
    for stack in (default_stack, prod_stack):
        assert {b["force_destroy"] for b in stack.resources("aws_s3_bucket").values()} == {False}
    assert default_stack.resources("aws_s3_bucket")["dicom_bucket"]["bucket_prefix"] == "orthweb-dicom-"


def test_lifecycle_rules(default_stack, tmp_path):
    rules = {
        r["id"]: r
        for lc in default_stack.resources("aws_s3_bucket_lifecycle_configuration").values()
        if "dicom_bucket" in lc["bucket"]
        for r in lc["rule"]
    }
    assert rules["expire-noncurrent-versions"]["noncurrent_version_expiration"][0]["noncurrent_days"] == 90
    assert rules["abort-incomplete-uploads"]["abort_incomplete_multipart_upload"][0]["days_after_initiation"] == 7
    assert "intelligent-tiering" not in rules

    from config.inputs import OrthwebConfig
    from tests.conftest import synth_json

    data = synth_json(OrthwebConfig(intelligent_tiering=True), tmp_path)
    tiering = [
        r
        for lc in data["resource"]["aws_s3_bucket_lifecycle_configuration"].values()
        for r in lc["rule"]
        if r["id"] == "intelligent-tiering"
    ]
    assert tiering[0]["transition"][0]["storage_class"] == "INTELLIGENT_TIERING"


def test_database_defaults_and_prod(default_stack, prod_stack):
    db = default_stack.one("aws_db_instance")
    assert db["engine"] == "postgres" and db["engine_version"] == POSTGRES_ENGINE_VERSION
    assert db["manage_master_user_password"] is True
    assert "password" not in db and "master_password" not in db
    assert db["storage_encrypted"] is True and db["publicly_accessible"] is False
    assert db["backup_retention_period"] >= 7 and db["copy_tags_to_snapshot"] is True
    assert db["deletion_protection"] is True, "on by default in every environment"
    assert db["skip_final_snapshot"] is False and db["final_snapshot_identifier"] == "orthweb-db-final"
    assert db["multi_az"] is False and db["delete_automated_backups"] is True
    assert db["performance_insights_kms_key_id"] == "${aws_kms_key.site_key.arn}"
    assert db["monitoring_interval"] == 60 and db["monitoring_role_arn"].startswith(
        "${aws_iam_role.database_monitoring"
    )
    assert db["enabled_cloudwatch_logs_exports"] == ["postgresql", "upgrade"]
    prod = prod_stack.one("aws_db_instance")
    assert prod["deletion_protection"] is True and prod["skip_final_snapshot"] is False
    assert prod["final_snapshot_identifier"] == "orthweb-db-final"
    assert prod["delete_automated_backups"] is False and prod["multi_az"] is True
    params = {p["name"]: p["value"] for p in default_stack.one("aws_db_parameter_group")["parameter"]}
    assert params["rds.force_ssl"] == "1"
    assert params["log_statement"] == "none" and params["log_min_duration_statement"] == "-1"
    assert db["parameter_group_name"].startswith("${aws_db_parameter_group.")


def test_database_ingress_only_from_host_security_group(default_stack):
    db_sg_ref = "${aws_security_group.database_sg"
    rules = [
        r
        for r in default_stack.resources("aws_vpc_security_group_ingress_rule").values()
        if r["security_group_id"].startswith(db_sg_ref)
    ]
    assert len(rules) == 1
    assert rules[0]["from_port"] == rules[0]["to_port"] == POSTGRES_PORT
    assert rules[0]["referenced_security_group_id"].startswith("${aws_security_group.host_sg")
    assert "cidr_ipv4" not in rules[0]


def test_host_hardening(default_stack):
    lt = default_stack.one("aws_launch_template")
    assert lt["metadata_options"]["http_tokens"] == "required"
    # One hop: the host role's credentials never reach a container (Orthanc has its own role).
    assert lt["metadata_options"]["http_put_response_hop_limit"] == 1
    assert default_stack.one("aws_instance")["metadata_options"]["http_put_response_hop_limit"] == 1
    assert lt["monitoring"] == {"enabled": True}
    assert lt["network_interfaces"][0]["associate_public_ip_address"] == "false", "the Elastic IP is the only address"
    assert "key_name" not in lt, "no SSH key pair unless the user supplies a public key"
    ami = default_stack.data_sources("aws_ssm_parameter")
    assert [a["name"] for a in ami.values()] == [AL2023_AMI_PARAMETER]
    assert lt["user_data"].startswith("${base64gzip(")
    instance = default_stack.one("aws_instance")
    assert instance["launch_template"]["id"].startswith("${aws_launch_template.")
    assert default_stack.one("aws_eip_association")["allocation_id"].startswith("${aws_eip.")
    ports = {
        (r["from_port"], r.get("cidr_ipv4"))
        for r in default_stack.resources("aws_vpc_security_group_ingress_rule").values()
        if r["security_group_id"].startswith("${aws_security_group.host")
    }
    assert ports == {(HTTPS_PORT, "0.0.0.0/0"), (DICOM_TLS_PORT, "0.0.0.0/0")}


def test_pinned_ami_and_ssh_key_and_client_cidrs(tmp_path):
    from config.inputs import OrthwebConfig
    from tests.conftest import synth_json

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb5nC2m1wV0Y2bKq3n8dFJkT7H2cX0f5e9r3QmT0aBc admin@site"
    data = synth_json(
        OrthwebConfig(
            ami_id="ami-0123456789abcdef0",
            ssh_public_key=key,
            web_client_cidrs=("10.1.0.0/16", "192.168.5.0/24"),
            dicom_client_cidrs=("10.2.0.0/24",),
        ),
        tmp_path,
    )
    lt = next(iter(data["resource"]["aws_launch_template"].values()))
    assert lt["image_id"] == "ami-0123456789abcdef0"
    assert "aws_ssm_parameter" not in data.get("data", {})
    assert lt["key_name"].startswith("${aws_key_pair.")
    ingress = [
        (r["from_port"], r["cidr_ipv4"])
        for r in data["resource"]["aws_vpc_security_group_ingress_rule"].values()
        if "cidr_ipv4" in r
    ]
    assert sorted(ingress) == [
        (HTTPS_PORT, "10.1.0.0/16"),
        (HTTPS_PORT, "192.168.5.0/24"),
        (DICOM_TLS_PORT, "10.2.0.0/24"),
    ]


def role_of(stack, policy_fragment: str) -> str:
    """The role an inline policy is attached to, as its resource address."""
    policy = next(p for k, p in stack.resources("aws_iam_role_policy").items() if policy_fragment in k)
    return policy["role"].split(".")[1]


def test_only_named_roles_touch_studies(prod_stack, tmp_path):
    """The DICOM bucket's policy and the site key's name the same roles (Orthanc's, replication's,
    break-glass) for reading, writing and deleting studies; with allow_data_destroy the bucket
    leaves deletes to IAM (Terraform empties it on destroy)."""
    from config.inputs import OrthwebConfig
    from tests.conftest import synth_json

    def named(data: dict) -> tuple[dict, dict]:
        policies = data["resource"]["aws_s3_bucket_policy"]
        bucket = json.loads(next(p for k, p in policies.items() if "dicom" in k)["policy"])
        key = json.loads(data["resource"]["aws_kms_key"]["site_key"]["policy"])
        by_sid = {s.get("Sid"): s for s in bucket["Statement"] + key["Statement"]}
        return by_sid["OnlyNamedRolesTouchStudies"], by_sid["OnlyNamedRolesDecryptStudies"]

    glass = "arn:aws:iam::123456789012:role/pacs-break-glass"
    data = synth_json(OrthwebConfig(**{**PROD, "break_glass_role_arns": (glass,)}), tmp_path / "a")
    objects, decrypt = named(data)
    roles = objects["Condition"]["ArnNotLike"]["aws:PrincipalArn"]
    assert roles == decrypt["Condition"]["ArnNotLike"]["aws:PrincipalArn"]
    assert glass in roles and any("orthanc-role" in r for r in roles) and any("replica" in r for r in roles)
    assert len(roles) == 3 and objects["Effect"] == decrypt["Effect"] == "Deny"
    assert {"s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:DeleteObjectVersion"} <= set(objects["Action"])
    assert decrypt["Action"] == "kms:Decrypt"
    assert "aws_s3_bucket.dicom_bucket.arn" in json.dumps(decrypt["Condition"]["ArnLike"])
    # The replica's copy, in its own bucket and under its own key: replication's role and break-glass.
    policies = data["resource"]["aws_s3_bucket_policy"]
    replica_bucket = json.loads(next(p for k, p in policies.items() if k.startswith("replica_replica"))["policy"])
    replica_key = json.loads(data["resource"]["aws_kms_key"]["replica_key"]["policy"])
    for statement in (*replica_bucket["Statement"], *replica_key["Statement"]):
        if statement.get("Sid", "").startswith("OnlyNamedRoles"):
            listed = statement["Condition"]["ArnNotLike"]["aws:PrincipalArn"]
            assert glass in listed and len(listed) == 2 and not any("orthanc-role" in r for r in listed)
    sids = {s.get("Sid") for s in (*replica_bucket["Statement"], *replica_key["Statement"])}
    assert {"OnlyNamedRolesTouchStudies", "OnlyNamedRolesDecryptStudies"} <= sids
    destroyable, _ = named(synth_json(OrthwebConfig(allow_data_destroy=True), tmp_path / "b"))
    assert not {"s3:DeleteObject", "s3:DeleteObjectVersion"} & set(destroyable["Action"])
    assert "s3:GetObject" in destroyable["Action"]


def test_host_role_least_privilege(default_stack):
    orthanc = {s["sid"]: s for s in statements(default_stack, "storage_orthanc-dicom")}
    assert set(orthanc["DicomObjects"]["actions"]) == {
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
    }
    assert orthanc["DicomObjects"]["resources"] == ["${aws_s3_bucket.dicom_bucket.arn}/*"]
    # The DICOM objects are Orthanc's role's, not the host's.
    assert role_of(default_stack, "storage_orthanc-dicom").startswith("access_orthanc-role")
    host = {s["sid"]: s for s in statements(default_stack, "access_host-write")}
    assert not any("s3:" in a for s in host.values() for a in s["actions"])
    master = statements(default_stack, "database_host-master-secret")[0]
    assert master["resources"] == ["${aws_db_instance.database.master_user_secret[0].secret_arn}"]
    assert host["WriteGeneratedSecrets"]["actions"] == ["secretsmanager:PutSecretValue"]
    # The key only through Secrets Manager and S3 (kms:ViaService); no kms:Encrypt, no direct use.
    for fragment, services in (("key_host", {"secretsmanager", "s3"}), ("key_orthanc", {"s3"})):
        (use,) = statements(default_stack, fragment)
        assert set(use["actions"]) == {"kms:Decrypt", "kms:GenerateDataKey"}
        (condition,) = use["condition"]
        assert condition["variable"] == "kms:ViaService"
        assert {v.split(".")[0] for v in condition["values"]} == services
    attachments = {
        a["policy_arn"].rsplit("/", 1)[1] for a in default_stack.resources("aws_iam_role_policy_attachment").values()
    }
    assert attachments == {"AmazonRDSEnhancedMonitoringRole"}, "no AmazonSSMManagedInstanceCore"


def test_service_roles_trust_only_this_account(default_stack):
    for doc_id, doc in default_stack.data_sources("aws_iam_policy_document").items():
        for statement in doc["statement"]:
            services = [i for p in statement.get("principals", []) if p["type"] == "Service" for i in p["identifiers"]]
            if "sts:AssumeRole" in statement.get("actions", []) and services and services != ["ec2.amazonaws.com"]:
                variables = {c["variable"] for c in statement.get("condition", [])}
                assert variables & {"aws:SourceAccount", "aws:SourceArn"}, doc_id


def test_app_secrets_created_without_value(default_stack, prod_stack, tmp_path):
    from config.inputs import OrthwebConfig
    from tests.conftest import SITE_SECRETS, synth_json

    secrets = default_stack.resources("aws_secretsmanager_secret")
    assert set(secrets) == SITE_SECRETS
    assert not default_stack.resources("aws_secretsmanager_secret_version")
    for stack in (default_stack, prod_stack):
        assert all(s["recovery_window_in_days"] == 30 for s in stack.resources("aws_secretsmanager_secret").values())
    # Only an explicit allow_data_destroy deletes secrets (and buckets, and the database) for good.
    destroyable = synth_json(OrthwebConfig(allow_data_destroy=True), tmp_path)["resource"]
    assert all(s["recovery_window_in_days"] == 0 for s in destroyable["aws_secretsmanager_secret"].values())
    assert all(b["force_destroy"] is True for b in destroyable["aws_s3_bucket"].values())
    database = destroyable["aws_db_instance"]["database"]
    assert database["skip_final_snapshot"] is True and "final_snapshot_identifier" not in database
    assert database["deletion_protection"] is True, "deletion protection stays its own setting"


def test_log_groups_have_finite_retention(default_stack):
    groups = default_stack.resources("aws_cloudwatch_log_group").values()
    assert {g["name"] for g in groups} == {
        "/orthweb/vpc-flow-logs",
        "/orthweb/containers",
        "/aws/rds/instance/orthweb-db/postgresql",
        "/aws/rds/instance/orthweb-db/upgrade",
        "/orthweb/sessions",
        "/orthweb/host",
    }
    assert all(g["retention_in_days"] == 365 for g in groups)


SINGLE_OUTPUTS = {
    "hostinfo",
    "dbinfo",
    "s3bucket",
    "bucket_name",
    "site_url",
    "dicom_endpoint",
    "db_secret_arn",
    "ssm_session_command",
    "operator_policy_arn",
    "dashboard",
    "region",
    "ae_title",
    "admin_secret",
    "users_secret",
    "ca_secret",
}
SCALED_OUTPUTS = {"load_balancer_dns", "load_balancer_addresses", "host_group"}


def test_outputs_have_exact_names(default_stack, synth_profile):
    outputs = default_stack.data["output"]
    assert set(outputs) == SINGLE_OUTPUTS
    # hostinfo names the instance and how to get a shell (there is no SSH to log in with).
    assert outputs["hostinfo"]["value"].startswith("instance ${aws_instance.")
    assert "ssm_session_command" in outputs["hostinfo"]["value"] and "ec2-user" not in outputs["hostinfo"]["value"]
    assert outputs["dbinfo"]["value"] == "${aws_db_instance.database.address}:${aws_db_instance.database.port}"
    assert outputs["s3bucket"]["value"] == "${aws_s3_bucket.dicom_bucket.bucket_domain_name}"
    assert outputs["bucket_name"]["value"] == "${aws_s3_bucket.dicom_bucket.bucket}"
    assert outputs["dicom_endpoint"]["value"].endswith(f":{DICOM_TLS_PORT}")
    session = outputs["ssm_session_command"]["value"]
    assert session.startswith("aws ssm start-session --target ${aws_instance.")
    assert "--document-name ${aws_ssm_document." in session
    # The validator's inputs: secret ARNs (never values), the region and the AE title.
    assert outputs["admin_secret"]["value"] == "${aws_secretsmanager_secret.admin_secret.arn}"
    # What clients trust: the CA certificate without its key (the key's secret is the host's alone).
    assert outputs["ca_secret"]["value"] == "${aws_secretsmanager_secret.ca_cert_secret.arn}"
    assert outputs["region"]["value"].startswith("${data.aws_region.") and outputs["ae_title"]["value"] == "ORTHANC"
    scaled = synth_profile("scaled").data["output"]
    assert set(scaled) == SINGLE_OUTPUTS | SCALED_OUTPUTS | {"replica_bucket"}  # a prod site: replicated
    assert re.fullmatch(r"https://\$\{aws_lb\.balancer_nlb[^}]*\.dns_name\}", scaled["site_url"]["value"])
    assert "describe-auto-scaling-groups" in scaled["ssm_session_command"]["value"]


def _ref(value: str) -> str:
    """``${aws_x.name.attr}`` -> ``name``."""
    return value.split(".")[1]


def test_scaled_profile_wiring(synth_profile, default_stack):
    """Hosts in private subnets behind the load balancer only, out through NAT, health from the balancer."""
    scaled = synth_profile("scaled")
    group = scaled.one("aws_autoscaling_group")
    # Room to grow (hosts_max 6 > hosts 3): AWS moves the count, by CPU, between the two.
    assert (group["min_size"], group["max_size"]) == (3, 6) and "desired_capacity" not in group
    policy = scaled.one("aws_autoscaling_policy")
    assert policy["policy_type"] == "TargetTrackingScaling" and policy["autoscaling_group_name"].startswith(
        "${aws_autoscaling_group."
    )
    fixed = synth_profile("hosts2").one("aws_autoscaling_group")
    assert (fixed["min_size"], fixed["desired_capacity"], fixed["max_size"]) == (2, 2, 2)
    assert not synth_profile("hosts2").resources("aws_autoscaling_policy")
    assert group["health_check_type"] == "ELB" and len(group["target_group_arns"]) == 2
    refresh = group["instance_refresh"]
    assert refresh["strategy"] == "Rolling" and refresh["preferences"]["min_healthy_percentage"] == 100
    subnets = scaled.resources("aws_subnet")
    assert {subnets[_ref(s)]["tags"]["Tier"] for s in group["vpc_zone_identifier"]} == {"private"}
    assert len(scaled.resources("aws_nat_gateway")) == scaled.config.az_count
    assert not default_stack.resources("aws_nat_gateway")
    template = scaled.one("aws_launch_template")
    assert template["network_interfaces"][0]["associate_public_ip_address"] == "false"
    assert not scaled.resources("aws_instance") and not scaled.resources("aws_eip_association")
    # The hosts accept only the load balancer; the client allow-lists sit on the balancer's group.
    host_sg = f"${{aws_security_group.{_one_key(scaled, 'aws_security_group', 'host_sg')}.id}}"
    balancer_sg = f"${{aws_security_group.{_one_key(scaled, 'aws_security_group', 'balancer_sg')}.id}}"
    rules = scaled.resources("aws_vpc_security_group_ingress_rule").values()
    host_in = [r for r in rules if r["security_group_id"] == host_sg]
    assert host_in and all(
        r.get("referenced_security_group_id") == balancer_sg and "cidr_ipv4" not in r for r in host_in
    )
    assert {(r["from_port"], r["cidr_ipv4"]) for r in rules if r["security_group_id"] == balancer_sg} == {
        (HTTPS_PORT, "10.20.0.0/16"),
        (DICOM_TLS_PORT, "10.20.1.0/24"),
    }
    balancer = scaled.one("aws_lb")
    assert balancer["enable_deletion_protection"] is True
    # One fixed address per zone; the first is the site's own Elastic IP (a single host's PACS keep theirs).
    allocations = [m["allocation_id"] for m in balancer["subnet_mapping"]]
    assert allocations[0] == "${aws_eip.site_eip.allocation_id}" and len(allocations) == scaled.config.az_count


def _one_key(stack, rtype: str, fragment: str) -> str:
    found = [k for k in stack.resources(rtype) if k.startswith(fragment)]
    assert len(found) == 1, found
    return found[0]


def test_default_tags_and_only_aws_provider(default_stack):
    providers = default_stack.data["terraform"]["required_providers"]
    assert set(providers) == {"aws"}
    assert providers["aws"]["version"] == "5.100.0"
    tags = default_stack.data["provider"]["aws"][0]["default_tags"][0]["tags"]
    assert tags["Name"] == "orthweb" and tags["Environment"] == "dev"


def test_unique_suffix_uses_random_provider(tmp_path):
    from config.inputs import OrthwebConfig
    from tests.conftest import synth_json

    data = synth_json(OrthwebConfig(unique_suffix=True), tmp_path)
    assert "random" in data["terraform"]["required_providers"]
    suffix = "${random_id.name-suffix.hex}"
    assert data["resource"]["aws_s3_bucket"]["dicom_bucket"]["bucket_prefix"] == f"orthweb-{suffix}-dicom-"
    assert "random_password" not in data["resource"]


def test_emulator_target_points_every_service_at_loopback(tmp_path):
    from config.inputs import OrthwebConfig
    from tests.conftest import synth_json

    data = synth_json(OrthwebConfig(target="emulator", emulator_endpoint="http://127.0.0.1:4566"), tmp_path)
    provider = data["provider"]["aws"][0]
    assert set(provider["endpoints"][0].values()) == {"http://127.0.0.1:4566"}
    assert provider["skip_credentials_validation"] is True and provider["s3_use_path_style"] is True
    # What else the emulator target changes, and nothing more (stacks/emulator.py): the bucket
    # policies are the real ones (the emulator judges their denies: tools/harness/moto_server.py).
    real = synth_json(OrthwebConfig(), tmp_path / "aws")["resource"]["aws_s3_bucket_policy"]
    assert data["resource"]["aws_s3_bucket_policy"] == real
    assert "monitoring" not in next(iter(data["resource"]["aws_instance"].values()))


def test_real_aws_target_has_no_endpoints_or_keys(default_stack):
    provider = default_stack.data["provider"]["aws"][0]
    assert not {"endpoints", "access_key", "secret_key", "skip_credentials_validation"} & set(provider)


def test_optional_extras(synth_profile):
    extras = synth_profile("extras")
    trail = extras.one("aws_cloudtrail")
    assert trail["enable_log_file_validation"] is True and trail["kms_key_id"] == "${aws_kms_key.site_key.arn}"
    assert trail["event_selector"][0]["data_resource"][0]["values"] == ["${aws_s3_bucket.dicom_bucket.arn}/"]
    key_sids = {s.get("Sid") for s in json.loads(extras.resources("aws_kms_key")["site_key"]["policy"])["Statement"]}
    assert "CloudTrailEncryptsLogs" in key_sids
    log_policy = next(p for k, p in extras.resources("aws_s3_bucket_policy").items() if k.startswith("storage_log"))
    assert {"CloudTrailAclCheck", "CloudTrailWrite"} <= {
        s.get("Sid") for s in json.loads(log_policy["policy"])["Statement"]
    }
    # The DICOM bucket's, and its replica's (replicas keep their retention).
    locks = {v["bucket"]: v for v in extras.resources("aws_s3_bucket_object_lock_configuration").values()}
    assert set(locks) == {"${aws_s3_bucket.dicom_bucket.id}", "${aws_s3_bucket.replica_bucket.id}"}
    assert all(lock["rule"]["default_retention"] == {"mode": "GOVERNANCE", "days": 30} for lock in locks.values())
    plan = extras.one("aws_backup_plan")
    assert plan["rule"][0]["lifecycle"]["delete_after"] == 35
    assert extras.one("aws_backup_vault")["kms_key_arn"] == "${aws_kms_key.site_key.arn}"
    assert extras.one("aws_backup_selection")["resources"] == ["${aws_db_instance.database.arn}"]


def test_extras_are_off_by_default(default_stack):
    for rtype in ("aws_cloudtrail", "aws_s3_bucket_object_lock_configuration", "aws_backup_plan"):
        assert not default_stack.resources(rtype)


def test_your_own_certificate_secret_is_readable_by_the_host(tmp_path):
    from config.inputs import OrthwebConfig
    from tests.conftest import synth_json

    data = synth_json(OrthwebConfig(tls_certificate_secret="hospital/pacs-cert"), tmp_path)
    doc = next(d for k, d in data["data"]["aws_iam_policy_document"].items() if "access_host-write" in k)
    read = next(s for s in doc["statement"] if s["sid"] == "ReadSecrets")
    assert any(r.endswith(":secret:hospital/pacs-cert-??????") for r in read["resources"])
    write = next(s for s in doc["statement"] if s["sid"] == "WriteGeneratedSecrets")
    assert not any("pacs-cert" in r for r in write["resources"]), "the host never writes your certificate"


def test_environment_decides_retention_once():
    from config.inputs import OrthwebConfig
    from stacks.orthweb_stack import Retention

    dev = Retention.for_environment(OrthwebConfig(), "orthweb")
    prod = Retention.for_environment(OrthwebConfig(environment="prod", dicom_client_auth="certificate"), "orthweb")
    doomed = Retention.for_environment(OrthwebConfig(allow_data_destroy=True), "orthweb")
    # What a destroy keeps depends on allow_data_destroy alone, not on the environment.
    for kept in (dev, prod):
        assert (kept.force_destroy, kept.recovery_window_days, kept.skip_final_snapshot) == (False, 30, False)
        assert kept.final_snapshot_identifier == "orthweb-db-final"
    assert (doomed.force_destroy, doomed.recovery_window_days, doomed.skip_final_snapshot) == (True, 0, True)
    assert doomed.final_snapshot_identifier is None
    # The environment decides how changes and automated backups are handled.
    assert (dev.apply_immediately, dev.delete_automated_backups) == (True, True)
    assert (prod.apply_immediately, prod.delete_automated_backups) == (False, False)


def test_provider_and_stack_with_cdktf_testing(default_stack):
    import cdktf

    text = (default_stack.stack_dir / "cdk.tf.json").read_text()
    assert cdktf.Testing.to_have_provider_with_properties(text, "aws", {"region": "us-east-1"})
    assert cdktf.Testing.to_have_resource_with_properties(text, "aws_kms_key", {"enable_key_rotation": True})
    assert not cdktf.Testing.to_have_resource(text, "aws_secretsmanager_secret_version")


@pytest.mark.terraform
def test_stack_is_valid_terraform_by_cdktf_testing(default_stack):
    """CDKTF's own check runs `terraform init` and `validate` on every stack of a synthesized app
    (the provider comes from the offline mirror: see conftest)."""
    import cdktf

    assert cdktf.Testing.to_be_valid_terraform(str(default_stack.outdir))


@pytest.mark.terraform
def test_cdktf_testing_validity_check_can_fail(default_stack, tmp_path):
    import cdktf

    broken = tmp_path / "app"
    shutil.copytree(default_stack.outdir, broken, ignore=shutil.ignore_patterns(".terraform*"))
    stack_json = broken / "stacks" / default_stack.config.name / "cdk.tf.json"
    data = json.loads(stack_json.read_text())
    next(iter(data["resource"]["aws_vpc"].values()))["no_such_argument"] = True
    stack_json.write_text(json.dumps(data))
    assert not cdktf.Testing.to_be_valid_terraform(str(broken))
