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

from config.facts import DICOM_TLS_PORT, HTTPS_PORT, PORT_FORWARDING_DOCUMENT, POSTGRES_PORT, SSH_PORT
from modules.access import SESSION_PREFERENCES_DOCUMENT
from modules.storage import DICOM_BUCKET_ACTIONS, DICOM_OBJECT_ACTIONS
from tools.harness.emulator import FAKE_CREDENTIALS
from tools.ops.tfjson import listed


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

    @property
    def scaled(self) -> bool:
        """The scaled profile: hosts in an Auto Scaling group behind a load balancer."""
        return bool(self.all_attrs("aws_autoscaling_group"))

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
    wanted = {"DenyOtherKeys", "DenyOtherEncryption", "DenyCustomerKeys", "OnlyNamedRolesTouchStudies"}
    expect(wanted <= sids, f"bucket policy denies {sids}")
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
    if d.scaled:
        hosts = _fleet_hosts(d, lt_id)
    else:
        hosts = [d.attrs("aws_instance")["id"]]
    # The emulator launches a group's instances without the template's metadata options (AWS applies
    # them); there the template itself, checked above, is the evidence.
    if not (d.scaled and d.emulated):
        for r in ec2.describe_instances(InstanceIds=hosts)["Reservations"]:
            for instance in r["Instances"]:
                expect(instance["MetadataOptions"]["HttpTokens"] == "required", "instance does not require IMDSv2")
    user_data = gzip.decompress(base64.b64decode(version["UserData"])).decode()
    bucket = d.attrs("aws_s3_bucket", "dicom_bucket")["bucket"]
    expect(
        user_data.startswith("#cloud-config") and f"BUCKET='{bucket}'" in user_data,
        "user data does not carry the deployed bucket name",
    )
    expect("${" not in user_data.replace("$${", "") or "TfToken" not in user_data, "unresolved token in user data")
    which = f"{len(hosts)} hosts of the Auto Scaling group" if d.scaled else f"host {hosts[0]}"
    return f"{which}: IMDSv2 (hop limit 1), encrypted gp3 root, user data {len(version['UserData'])} B"


def _fleet_hosts(d: Deployment, template_id: str) -> list[str]:
    """The Auto Scaling group as AWS describes it: launched from the site's template, health from
    the load balancer, in the private subnets; its instances without public addresses."""
    ec2 = d.client("ec2")
    name = d.attrs("aws_autoscaling_group")["name"]
    group = d.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
    expect(group["LaunchTemplate"]["LaunchTemplateId"] == template_id, f"group template {group['LaunchTemplate']}")
    expect(
        group["HealthCheckType"] == "ELB" and len(group["TargetGroupARNs"]) == 2, "group health not from the balancer"
    )
    private = {s["id"] for s in d.all_attrs("aws_subnet") if s["tags"].get("Tier") == "private"}
    subnets = set(group["VPCZoneIdentifier"].split(","))
    expect(bool(subnets) and subnets <= private, f"group subnets {subnets} not private")
    hosts = [i["InstanceId"] for i in group["Instances"]]
    expect(len(hosts) == group["DesiredCapacity"] >= 2, f"{len(hosts)} hosts for desired {group['DesiredCapacity']}")
    for r in ec2.describe_instances(InstanceIds=hosts)["Reservations"]:
        for instance in r["Instances"]:
            expect(not instance.get("PublicIpAddress"), f"{instance['InstanceId']} has a public address")
    return hosts


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
    values = dict(re.findall(r"^([A-Z0-9_]+)='([^']*)'$", site_env, re.M))
    named, digest = values.get("BUNDLE_OBJECT", ""), values.get("BUNDLE_SHA256", "")
    expect(bool(named and re.fullmatch(r"[0-9a-f]{64}", digest)), "the user data names no boot bundle")
    head = s3.head_object(Bucket=bucket, Key=named)
    expect(
        head.get("ServerSideEncryption") == "aws:kms" and head.get("SSEKMSKeyId") == key_arn,
        f"bundle encryption {head.get('ServerSideEncryption')} {head.get('SSEKMSKeyId')}",
    )
    body = s3.get_object(Bucket=bucket, Key=named)["Body"].read()
    expect(hashlib.sha256(body).hexdigest() == digest, "the bundle's SHA-256 differs from the user data's")
    # What the containers may reach (userdata/host/egress.py), as Terraform rendered it at apply: the
    # VPC's range, and the prefix list of the S3 gateway endpoint (the host reads its ranges).
    vpc = d.attrs("aws_vpc")
    endpoint = next(e for e in d.all_attrs("aws_vpc_endpoint") if e["vpc_endpoint_type"] == "Gateway")
    listed = ec2.get_managed_prefix_list_entries(PrefixListId=values.get("S3_PREFIX_LIST", "-"))["Entries"]
    ranges = sorted(e["Cidr"] for e in listed)
    expect(
        values.get("S3_PREFIX_LIST") == endpoint["prefix_list_id"] and bool(ranges),
        f"S3_PREFIX_LIST {values.get('S3_PREFIX_LIST')!r}, the S3 endpoint's {endpoint['prefix_list_id']} ({ranges})",
    )
    expect(values.get("VPC_CIDR") == vpc["cidr_block"], f"VPC_CIDR {values.get('VPC_CIDR')!r}, VPC {vpc['cidr_block']}")
    return (
        f"boot bundle s3://{bucket}/{named}: {len(body)} B, SSE-KMS with the site key, SHA-256 matches;"
        f" containers' egress: {len(ranges)} S3 ranges, VPC {vpc['cidr_block']}"
    )


def _ingress(ec2, group_id: str) -> list[dict[str, Any]]:
    return ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]["IpPermissions"]


def check_security_groups(d: Deployment) -> str:
    ec2 = d.client("ec2")
    groups = {g["name"]: g["id"] for g in d.all_attrs("aws_security_group")}
    host, db = groups["orthweb-host"], groups["orthweb-db"]
    # The client allow-lists: on the host, or (scaled) on the load balancer, the host accepting only it.
    front = groups["orthweb-nlb"] if d.scaled else host
    front_rules = {(p["FromPort"], r["CidrIp"]) for p in _ingress(ec2, front) for r in p.get("IpRanges", [])}
    expect(front_rules == {(HTTPS_PORT, "0.0.0.0/0"), (DICOM_TLS_PORT, "0.0.0.0/0")}, f"front ingress {front_rules}")
    if d.scaled:
        host_rules = {(p["FromPort"], g["GroupId"]) for p in _ingress(ec2, host) for g in p.get("UserIdGroupPairs", [])}
        expect(
            host_rules == {(HTTPS_PORT, front), (DICOM_TLS_PORT, front)}
            and not any(p.get("IpRanges") for p in _ingress(ec2, host)),
            f"host ingress {host_rules}",
        )
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
    where = "load balancer (hosts only from it)" if d.scaled else "host"
    return (
        f"security groups: {where} {HTTPS_PORT}/{DICOM_TLS_PORT} only, PostgreSQL only from the host group,"
        f" no {SSH_PORT}, default closed"
    )


def check_balancer(d: Deployment) -> str:
    """The Network Load Balancer as AWS describes it: one fixed address per zone, TCP passed through
    on both ports, health from Orthanc, long draining, cross-zone."""
    from modules.balancer import DEREGISTRATION_DELAY_SECONDS, HEALTH_PATH

    elb = d.client("elbv2")
    arn = d.attrs("aws_lb")["arn"]
    lb = elb.describe_load_balancers(LoadBalancerArns=[arn])["LoadBalancers"][0]
    expect(lb["Type"] == "network", f"load balancer type {lb['Type']}")
    # The emulator leaves the scheme out of a network load balancer's description; AWS always has it.
    if "Scheme" in lb or not d.emulated:
        expect(lb.get("Scheme") == "internet-facing", f"load balancer scheme {lb.get('Scheme')}")
    public = {s["id"] for s in d.all_attrs("aws_subnet") if s["tags"].get("Tier") == "public"}
    zones = {z["SubnetId"] for z in lb["AvailabilityZones"]}
    expect(zones == public, f"balancer subnets {zones}, the public subnets {public}")
    eips = {e["allocation_id"] for e in d.all_attrs("aws_eip") if e["tags"].get("Name", "").startswith("orthweb-nlb")}
    eips.add(d.attrs("aws_eip", "site_eip")["allocation_id"])
    mapped = {a.get("AllocationId") for z in lb["AvailabilityZones"] for a in z.get("LoadBalancerAddresses", [])}
    # The emulator does not keep a subnet mapping's Elastic IP (stacks/emulator.py); AWS always reports it.
    if not d.emulated:
        expect(mapped == eips, f"balancer addresses {mapped}, the site's Elastic IPs {eips}")
    attributes = {
        a["Key"]: a["Value"] for a in elb.describe_load_balancer_attributes(LoadBalancerArn=arn)["Attributes"]
    }
    expect(attributes.get("load_balancing.cross_zone.enabled") == "true", "cross-zone off")
    expect(attributes.get("deletion_protection.enabled") == "true", "deletion protection off")
    listeners = elb.describe_listeners(LoadBalancerArn=arn)["Listeners"]
    expect(
        sorted((li["Port"], li["Protocol"]) for li in listeners) == [(HTTPS_PORT, "TCP"), (DICOM_TLS_PORT, "TCP")],
        f"listeners {[(li['Port'], li['Protocol']) for li in listeners]}",
    )
    for group in elb.describe_target_groups(LoadBalancerArn=arn)["TargetGroups"]:
        expect(
            (group["HealthCheckProtocol"], group["HealthCheckPath"], group["HealthCheckPort"])
            == ("HTTPS", HEALTH_PATH, str(HTTPS_PORT)),
            f"health check of {group['TargetGroupName']}",
        )
        tg_attributes = elb.describe_target_group_attributes(TargetGroupArn=group["TargetGroupArn"])["Attributes"]
        delay = {a["Key"]: a["Value"] for a in tg_attributes}.get("deregistration_delay.timeout_seconds")
        expect(delay == str(DEREGISTRATION_DELAY_SECONDS), f"deregistration delay {delay}")
    return (
        f"load balancer: network, in {len(zones)} public subnets with {len(eips)} fixed addresses, TCP {HTTPS_PORT} and"
        f" {DICOM_TLS_PORT} passed through, health {HEALTH_PATH}, {DEREGISTRATION_DELAY_SECONDS} s draining"
    )


def check_alarms(d: Deployment) -> str:
    """The alarms as CloudWatch holds them: the single host recovers and reboots itself; a fleet's
    unhealthy hosts alarm; every alarm notifies the KMS-encrypted topic; one dashboard."""
    cloudwatch, sns = d.client("cloudwatch"), d.client("sns")
    topic = d.attrs("aws_sns_topic")
    expect(bool(topic.get("kms_master_key_id")), "alarm topic not encrypted")
    kms = sns.get_topic_attributes(TopicArn=topic["arn"])["Attributes"].get("KmsMasterKeyId")
    expect(kms == topic["kms_master_key_id"], f"topic key {kms}")
    alarms = {a["AlarmName"]: a for a in cloudwatch.describe_alarms(AlarmNamePrefix="orthweb-")["MetricAlarms"]}
    expect(all(topic["arn"] in a["AlarmActions"] for a in alarms.values()), "an alarm does not notify the topic")
    if d.scaled:
        expect({"orthweb-https-unhealthy", "orthweb-dicom-unhealthy"} <= set(alarms), f"alarms {sorted(alarms)}")
    else:
        actions = {a for name in ("orthweb-host-recover", "orthweb-host-reboot") for a in alarms[name]["AlarmActions"]}
        expect(
            any(a.endswith(":ec2:recover") for a in actions) and any(a.endswith(":ec2:reboot") for a in actions),
            f"host alarm actions {actions}",
        )
    for name in ("orthweb-db-cpu", "orthweb-root-volume"):
        expect(name in alarms, f"no alarm {name}")
    boards = [b["DashboardName"] for b in cloudwatch.list_dashboards()["DashboardEntries"]]
    expect(boards == ["orthweb"], f"dashboards {boards}")
    healing = "fleet health" if d.scaled else "EC2 recover/reboot on the status checks"
    return f"alarms: {len(alarms)}, {healing}, all to the encrypted topic; dashboard orthweb"


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


def check_sessions(d: Deployment) -> str:
    """Session Manager as SSM and IAM hold it: the site's document, and the account's preferences when
    the site owns them, log every session to the sessions group encrypted with the session key and
    never run as another user; the operator policy starts sessions with the site's documents only,
    and only with Session Manager checking the document (ssm:SessionDocumentAccessCheck)."""
    ssm, iam = d.client("ssm"), d.client("iam")
    group = next(g["name"] for g in d.all_attrs("aws_cloudwatch_log_group") if g["name"].endswith("/sessions"))
    key = d.attrs("aws_kms_key", "session_key")["key_id"]
    names = sorted(doc["name"] for doc in d.all_attrs("aws_ssm_document"))
    for name in names:
        inputs = json.loads(ssm.get_document(Name=name)["Content"])["inputs"]
        expect(
            inputs["cloudWatchLogGroupName"] == group
            and inputs["cloudWatchEncryptionEnabled"] is True
            and inputs["kmsKeyId"] == key
            and inputs["runAsEnabled"] is False,
            f"session document {name} does not log encrypted to {group}: {inputs}",
        )
    arn = d.outputs["operator_policy_arn"]
    version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
    document = json.loads(document) if isinstance(document, str) else document
    starts = [s for s in document["Statement"] if "ssm:StartSession" in listed(s.get("Action"))]
    allowed_documents = sorted(r.rsplit("/", 1)[1] for s in starts for r in listed(s["Resource"]) if ":document/" in r)
    site_document = next(n for n in names if n != SESSION_PREFERENCES_DOCUMENT)
    expect(
        allowed_documents == sorted([site_document, PORT_FORWARDING_DOCUMENT]),
        f"the operator policy starts sessions with {allowed_documents}",
    )
    checked = [s.get("Condition", {}).get("BoolIfExists", {}).get("ssm:SessionDocumentAccessCheck") for s in starts]
    expect(checked == ["true"] * len(starts), f"StartSession without the document check: {checked}")
    return (
        f"sessions: {', '.join(names)} log to {group} (encrypted); operators start only {', '.join(allowed_documents)}"
    )


def check_outputs(d: Deployment) -> str:
    o = d.outputs
    expect(
        re.match(r"(instance i-[0-9a-f]+|hosts of Auto Scaling group \S+)", o.get("hostinfo", "")) is not None,
        f"hostinfo {o.get('hostinfo')}",
    )
    expect(o.get("s3bucket", "").startswith(o.get("bucket_name", "-") + "."), "bucket_name and s3bucket disagree")
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


CHECKS = (
    check_outputs,
    check_bucket,
    check_database,
    check_host,
    check_boot_bundle,
    check_security_groups,
    check_iam,
    check_sessions,
    check_alarms,
)
SCALED_CHECKS = (*CHECKS, check_balancer)


def deployment_of(rehearsal) -> Deployment:
    """The deployment a rehearsal left: its state, outputs, region and emulator."""
    return Deployment(rehearsal.state, rehearsal.outputs, rehearsal.region, rehearsal.emulator.endpoint)


def run_post_deploy_checks(rehearsal) -> list[str]:
    d = deployment_of(rehearsal)
    return [check(d) for check in (SCALED_CHECKS if d.scaled else CHECKS)]


def check_state(rehearsal) -> str:
    return check_state_hygiene(deployment_of(rehearsal), rehearsal.state_file.read_text())
