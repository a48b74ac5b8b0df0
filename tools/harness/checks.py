"""Post-deploy checks through the AWS APIs: what was actually created matches the design.

Used by the deploy rehearsal against the emulator; the same calls work against a real account
(pass a boto3 session for it). Each check returns a line for the report or raises CheckFailed.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from typing import Any

import boto3
import yaml

from config.facts import DICOM_TLS_PORT, HTTPS_PORT, POSTGRES_PORT, SSH_PORT
from modules.storage import DICOM_BUCKET_ACTIONS, DICOM_OBJECT_ACTIONS
from tools.harness.emulator import FAKE_CREDENTIALS


class CheckFailed(AssertionError):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


class Deployment:
    """What Terraform created, looked up through the AWS APIs."""

    def __init__(self, state: dict[str, Any], outputs: dict[str, Any], region: str, endpoint: str | None = None):
        self.state, self.outputs = state, outputs
        # Deployed to the AWS API emulator (whose target changes a few things: stacks/emulator.py).
        self.emulated = endpoint is not None
        kwargs: dict[str, Any] = {"region_name": region}
        if endpoint:
            kwargs.update(
                endpoint_url=endpoint,
                aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            )
        self.client = lambda service: boto3.client(service, **kwargs)

    def attrs(self, rtype: str, name: str | None = None) -> dict[str, Any]:
        found = [
            inst["attributes"]
            for r in self.state["resources"]
            if r.get("mode") == "managed" and r["type"] == rtype and (name is None or r["name"] == name)
            for inst in r["instances"]
        ]
        expect(len(found) == 1, f"expected one {rtype} {name or ''} in state, found {len(found)}")
        return found[0]

    def all_attrs(self, rtype: str) -> list[dict[str, Any]]:
        return [
            inst["attributes"]
            for r in self.state["resources"]
            if r.get("mode") == "managed" and r["type"] == rtype
            for inst in r["instances"]
        ]


def check_bucket(d: Deployment) -> str:
    s3 = d.client("s3")
    bucket = d.attrs("aws_s3_bucket", "dicom_bucket")["bucket"]
    key_arn = d.attrs("aws_kms_key", "site_key")["arn"]
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    default = rule["ApplyServerSideEncryptionByDefault"]
    expect(
        default["SSEAlgorithm"] == "aws:kms" and default["KMSMasterKeyID"] == key_arn, f"bucket encryption is {default}"
    )
    expect(rule.get("BucketKeyEnabled") is True, "bucket key not enabled")
    expect(s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled", "versioning not enabled")
    pab = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    expect(all(pab.values()) and len(pab) == 4, f"public access block is {pab}")
    policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    deny = [
        s
        for s in policy["Statement"]
        if s["Effect"] == "Deny" and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
    ]
    expect(bool(deny), "no statement denies non-TLS access")
    sids = {s.get("Sid") for s in policy["Statement"] if s["Effect"] == "Deny"}
    if d.emulated:
        # The emulator target leaves these out (stacks/emulator.py): the emulator cannot evaluate them.
        expect(not sids & {"DenyOtherKeys", "DenyCustomerKeys"}, f"emulator bucket policy denies {sids}")
    else:
        expect({"DenyOtherKeys", "DenyOtherEncryption", "DenyCustomerKeys"} <= sids, f"bucket policy denies {sids}")
    logging = s3.get_bucket_logging(Bucket=bucket).get("LoggingEnabled", {})
    expect(logging.get("TargetBucket", "").startswith("orthweb-logs-"), f"access logging is {logging}")
    return (
        f"bucket {bucket}: SSE-KMS with the site key + bucket key, versioned, public access blocked, TLS-only, logged"
    )


def check_database(d: Deployment) -> str:
    rds = d.client("rds")
    ident = d.attrs("aws_db_instance", "database")["identifier"]
    db = rds.describe_db_instances(DBInstanceIdentifier=ident)["DBInstances"][0]
    expect(db["StorageEncrypted"] is True, "database storage not encrypted")
    expect(db["PubliclyAccessible"] is False, "database publicly accessible")
    expect(bool(db.get("MasterUserSecret", {}).get("SecretArn")), "no RDS-managed master secret")
    group = db["DBParameterGroups"][0]["DBParameterGroupName"]
    params = {
        p["ParameterName"]: p.get("ParameterValue")
        for page in rds.get_paginator("describe_db_parameters").paginate(DBParameterGroupName=group)
        for p in page["Parameters"]
    }
    expect(params.get("rds.force_ssl") == "1", f"rds.force_ssl is {params.get('rds.force_ssl')}")
    expect(params.get("log_statement") == "none", f"log_statement is {params.get('log_statement')}")
    ec2 = d.client("ec2")
    subnet_ids = [s["SubnetIdentifier"] for s in db["DBSubnetGroup"]["Subnets"]]
    subnets = ec2.describe_subnets(SubnetIds=subnet_ids)["Subnets"]
    tiers = {t["Value"] for s in subnets for t in s.get("Tags", []) if t["Key"] == "Tier"}
    expect(tiers == {"private"}, f"database subnets are {tiers}")
    expect(len({s["AvailabilityZone"] for s in subnets}) >= 2, "database subnets span fewer than 2 AZs")
    return f"database {ident}: encrypted, private ({len(subnets)} subnets), rds.force_ssl=1, managed master secret"


def check_host(d: Deployment) -> str:
    ec2 = d.client("ec2")
    lt_id = d.attrs("aws_launch_template")["id"]
    version = ec2.describe_launch_template_versions(LaunchTemplateId=lt_id, Versions=["$Latest"])[
        "LaunchTemplateVersions"
    ][0]["LaunchTemplateData"]
    meta = version["MetadataOptions"]
    expect(meta["HttpTokens"] == "required" and meta["HttpPutResponseHopLimit"] == 1, f"metadata options {meta}")
    ebs = version["BlockDeviceMappings"][0]["Ebs"]
    expect(ebs["Encrypted"] is True and ebs["VolumeType"] == "gp3", f"root volume {ebs}")
    instance_id = d.attrs("aws_instance")["id"]
    instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    expect(instance["MetadataOptions"]["HttpTokens"] == "required", "instance does not require IMDSv2")
    user_data = gzip.decompress(base64.b64decode(version["UserData"])).decode()
    bucket = d.attrs("aws_s3_bucket", "dicom_bucket")["bucket"]
    expect(
        user_data.startswith("#cloud-config") and f"BUCKET='{bucket}'" in user_data,
        "user data does not carry the deployed bucket name",
    )
    expect("${" not in user_data.replace("$${", "") or "TfToken" not in user_data, "unresolved token in user data")
    return f"host {instance_id}: IMDSv2 (hop limit 1), encrypted gp3 root, user data {len(version['UserData'])} B"


def check_boot_bundle(d: Deployment) -> str:
    """The boot bundle is in the config bucket, encrypted with the site key, with the SHA-256 the user data names."""
    s3, ec2 = d.client("s3"), d.client("ec2")
    bucket = d.attrs("aws_s3_bucket", "config_bucket")["bucket"]
    key_arn = d.attrs("aws_kms_key", "site_key")["arn"]
    lt_id = d.attrs("aws_launch_template")["id"]
    user_data = gzip.decompress(
        base64.b64decode(
            ec2.describe_launch_template_versions(LaunchTemplateId=lt_id, Versions=["$Latest"])[
                "LaunchTemplateVersions"
            ][0]["LaunchTemplateData"]["UserData"]
        )
    ).decode()
    site_env = next(f["content"] for f in yaml.safe_load(user_data)["write_files"] if f["path"].endswith("site.env"))
    named = re.search(r"^BUNDLE_OBJECT='([^']+)'$", site_env, re.M)
    digest = re.search(r"^BUNDLE_SHA256='([0-9a-f]{64})'$", site_env, re.M)
    expect(bool(named and digest), "the user data names no boot bundle")
    assert named and digest
    head = s3.head_object(Bucket=bucket, Key=named.group(1))
    expect(
        head.get("ServerSideEncryption") == "aws:kms" and head.get("SSEKMSKeyId") == key_arn,
        f"bundle encryption {head.get('ServerSideEncryption')} {head.get('SSEKMSKeyId')}",
    )
    body = s3.get_object(Bucket=bucket, Key=named.group(1))["Body"].read()
    expect(hashlib.sha256(body).hexdigest() == digest.group(1), "the bundle's SHA-256 differs from the user data's")
    return f"boot bundle s3://{bucket}/{named.group(1)}: {len(body)} B, SSE-KMS with the site key, SHA-256 matches"


def _ingress(ec2, group_id: str) -> list[dict[str, Any]]:
    return ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]["IpPermissions"]


def check_security_groups(d: Deployment) -> str:
    ec2 = d.client("ec2")
    groups = {g["name"]: g["id"] for g in d.all_attrs("aws_security_group")}
    host, db = groups["orthweb-host"], groups["orthweb-db"]
    host_rules = {(p["FromPort"], r["CidrIp"]) for p in _ingress(ec2, host) for r in p.get("IpRanges", [])}
    expect(host_rules == {(HTTPS_PORT, "0.0.0.0/0"), (DICOM_TLS_PORT, "0.0.0.0/0")}, f"host ingress {host_rules}")
    db_rules = _ingress(ec2, db)
    expect(
        len(db_rules) == 1
        and db_rules[0]["FromPort"] == POSTGRES_PORT
        and not db_rules[0].get("IpRanges")
        and [p["GroupId"] for p in db_rules[0]["UserIdGroupPairs"]] == [host],
        f"database ingress {db_rules}",
    )
    vpc_id = d.attrs("aws_vpc")["id"]
    for group in ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["SecurityGroups"]:
        for perm in group["IpPermissions"]:
            expect(
                not (perm.get("FromPort", 0) <= SSH_PORT <= perm.get("ToPort", 65535)),
                f"port {SSH_PORT} open in {group['GroupId']}",
            )
        if group["GroupName"] == "default":
            expect(not group["IpPermissions"] and not group["IpPermissionsEgress"], "default security group not closed")
    return (
        f"security groups: host {HTTPS_PORT}/{DICOM_TLS_PORT} only, PostgreSQL only from the host group,"
        f" no {SSH_PORT}, default closed"
    )


def _role_actions(iam: Any, role: str) -> set[str]:
    actions: set[str] = set()
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        doc = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        doc = json.loads(doc) if isinstance(doc, str) else doc
        for statement in doc["Statement"]:
            action = statement["Action"]
            actions |= {action} if isinstance(action, str) else set(action)
    return actions


def check_iam(d: Deployment) -> str:
    iam = d.client("iam")
    host, orthanc = _role_actions(iam, "orthweb-host"), _role_actions(iam, "orthweb-orthanc")
    for actions in (host, orthanc):
        expect(not any(a == "*" or a.endswith(":*") for a in actions), f"wildcard action in {actions}")
    expect(
        set(DICOM_OBJECT_ACTIONS) | set(DICOM_BUCKET_ACTIONS) <= orthanc, f"Orthanc's role lacks S3 actions: {orthanc}"
    )
    expect(not any(a.startswith("s3:Put") or a.startswith("s3:Delete") for a in host), "the host role writes objects")
    expect("sts:AssumeRole" in host and not any(a.startswith("secretsmanager") for a in orthanc), "role split")
    for role in ("orthweb-host", "orthweb-orthanc"):
        attached = iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
        expect(attached == [], f"managed policies on {role}: {attached}")
    return (
        f"host role: {len(host)} actions, Orthanc's role: {len(orthanc)} (the DICOM objects); none wildcard;"
        " no managed policy"
    )


def check_outputs(d: Deployment) -> str:
    o = d.outputs
    expect(re.fullmatch(r"ec2-user@\S+", o.get("hostinfo", "")) is not None, f"hostinfo {o.get('hostinfo')}")
    expect(re.fullmatch(rf"\S+:{POSTGRES_PORT}", o.get("dbinfo", "")) is not None, f"dbinfo {o.get('dbinfo')}")
    expect(
        re.fullmatch(r"orthweb-dicom-\S+\.s3\.amazonaws\.com", o.get("s3bucket", "")) is not None,
        f"s3bucket {o.get('s3bucket')}",
    )
    expect(o.get("db_secret_arn", "").startswith("arn:aws:secretsmanager:"), "db_secret_arn")
    return "outputs: hostinfo, dbinfo, s3bucket well-formed; site_url, dicom_endpoint, db_secret_arn present"


def secret_values(d: Deployment) -> list[str]:
    """Every string value held in Secrets Manager, and the password inside JSON secrets."""
    sm = d.client("secretsmanager")
    values = []
    for secret in sm.list_secrets()["SecretList"]:
        try:
            text = sm.get_secret_value(SecretId=secret["ARN"])["SecretString"]
        except sm.exceptions.ResourceNotFoundException:
            continue
        values.append(text)
        try:
            values += [v for v in json.loads(text).values() if isinstance(v, str) and len(v) >= 8]
        except (ValueError, AttributeError):
            pass
    return values


def check_state_hygiene(d: Deployment, state_text: str) -> str:
    values = secret_values(d)
    expect(bool(values), "the emulator holds no secret value to compare with")
    leaked = [v[:4] + "..." for v in values if v in state_text]
    expect(not leaked, f"secret values found in Terraform state: {leaked}")
    return f"state: none of the {len(values)} secret values held in Secrets Manager appears in it"


CHECKS = (check_outputs, check_bucket, check_database, check_host, check_boot_bundle, check_security_groups, check_iam)


def _deployment(rehearsal) -> Deployment:
    return Deployment(rehearsal.state, rehearsal.outputs, rehearsal.region, rehearsal.emulator.endpoint)


def run_post_deploy_checks(rehearsal) -> list[str]:
    d = _deployment(rehearsal)
    return [check(d) for check in CHECKS]


def check_state(rehearsal) -> str:
    return check_state_hygiene(_deployment(rehearsal), rehearsal.state_file.read_text())
