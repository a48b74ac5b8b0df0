"""The emulator's IAM checks (tools/harness/moto_server.py), which the rehearsals rely on to hold the
host's calls to its role: an ARN-scoped Secrets Manager grant allows that secret and no other, IAM
wildcards are read as AWS reads them, and a trust policy naming a role admits that role's sessions
and no one else's. Against the real emulator server, with enforcement on."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.exceptions import ClientError

from tools.harness.emulator import Emulator
from tools.harness.moto_server import iam_pattern, principal_matches

ACCOUNT = "123456789012"


def _trust(principal: dict[str, object]) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": principal, "Action": "sts:AssumeRole"}],
        }
    )


def _allow(statements: list[tuple[str, str]]) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": a, "Resource": r} for a, r in statements],
        }
    )


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with Emulator(tmp_path_factory.mktemp("emulator")) as emu:
        yield emu


def _session(emulator: Emulator, role_arn: str, **credentials: str):
    sts = boto3.client("sts", **{**emulator.boto_kwargs(), **credentials})
    c = sts.assume_role(RoleArn=role_arn, RoleSessionName="session")["Credentials"]
    return boto3.Session(
        aws_access_key_id=c["AccessKeyId"],
        aws_secret_access_key=c["SecretAccessKey"],
        aws_session_token=c["SessionToken"],
        region_name=emulator.region,
    )


def _code(call) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    return str(caught.value.response["Error"]["Code"])


def test_a_role_reads_the_secret_it_is_granted_and_no_other(emulator):
    admin = emulator.boto_kwargs()
    sm, iam = boto3.client("secretsmanager", **admin), boto3.client("iam", **admin)
    mine = sm.create_secret(Name="site/admin", SecretString="s1")["ARN"]
    sm.create_secret(Name="site/other", SecretString="s2")
    sm.create_secret(Name="site/admin-extra", SecretString="s3")
    host = iam.create_role(RoleName="host", AssumeRolePolicyDocument=_trust({"Service": "ec2.amazonaws.com"}))
    # The pattern the stack writes for a secret named ahead of time: its name and AWS's 6 characters.
    pattern = mine.rsplit("-", 1)[0] + "-??????"
    iam.put_role_policy(
        RoleName="host", PolicyName="p", PolicyDocument=_allow([("secretsmanager:GetSecretValue", pattern)])
    )
    session = _session(emulator, host["Role"]["Arn"])
    as_host = session.client("secretsmanager", endpoint_url=emulator.endpoint)
    with emulator.iam_enforced():
        assert as_host.get_secret_value(SecretId="site/admin")["SecretString"] == "s1"
        assert as_host.get_secret_value(SecretId=mine)["SecretString"] == "s1"
        assert _code(lambda: as_host.get_secret_value(SecretId="site/other")) == "AccessDeniedException"
        # "-??????" is six characters, not a regular expression: "-extra-XXXXXX" does not match it.
        assert _code(lambda: as_host.get_secret_value(SecretId="site/admin-extra")) == "AccessDeniedException"
        assert _code(lambda: as_host.put_secret_value(SecretId="site/admin", SecretString="x")).startswith(
            "AccessDenied"
        )
        # The placeholder keys are refused like any unknown key once enforcement is on.
        assert _code(lambda: boto3.client("secretsmanager", **admin).list_secrets()) != ""
    assert boto3.client("secretsmanager", **admin).get_secret_value(SecretId="site/other")["SecretString"] == "s2"


def test_a_trust_policy_naming_a_role_admits_its_sessions_only(emulator):
    iam = boto3.client("iam", **emulator.boto_kwargs())
    host = iam.create_role(RoleName="web", AssumeRolePolicyDocument=_trust({"Service": "ec2.amazonaws.com"}))
    stranger = iam.create_role(RoleName="stranger", AssumeRolePolicyDocument=_trust({"Service": "ec2.amazonaws.com"}))
    app = iam.create_role(RoleName="app", AssumeRolePolicyDocument=_trust({"AWS": [host["Role"]["Arn"]]}))
    for name in ("web", "stranger"):
        iam.put_role_policy(
            RoleName=name, PolicyName="p", PolicyDocument=_allow([("sts:AssumeRole", app["Role"]["Arn"])])
        )
    sessions = {r["Role"]["RoleName"]: _session(emulator, r["Role"]["Arn"]) for r in (host, stranger)}
    with emulator.iam_enforced():
        sts = sessions["web"].client("sts", endpoint_url=emulator.endpoint)
        assert sts.assume_role(RoleArn=app["Role"]["Arn"], RoleSessionName="app")["Credentials"]["AccessKeyId"]
        other = sessions["stranger"].client("sts", endpoint_url=emulator.endpoint)
        assert _code(lambda: other.assume_role(RoleArn=app["Role"]["Arn"], RoleSessionName="app")) == "AccessDenied"


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("arn:aws:s3:::b/*", "arn:aws:s3:::b/k/1.dcm", True),
        ("arn:aws:s3:::b/*", "arn:aws:s3:::bx/k", False),
        ("s3:Get*", "s3:GetObject", True),
        ("secret:a-??????", "secret:a-Ab12Cd", True),
        ("secret:a-??????", "secret:a-Ab12C", False),
        ("secret:a.b", "secret:aXb", False),  # a dot is a dot
    ],
)
def test_iam_wildcards(pattern, text, expected):
    assert bool(iam_pattern(pattern).match(text)) is expected


@pytest.mark.parametrize(
    ("expected", "found"),
    [
        (f"arn:aws:iam::{ACCOUNT}:role/host", True),
        (f"arn:aws:iam::{ACCOUNT}:role/path/host", True),
        (f"arn:aws:iam::{ACCOUNT}:root", True),
        (f"arn:aws:iam::{ACCOUNT}:role/hostile", False),
        ("arn:aws:iam::999999999999:role/host", False),
    ],
)
def test_a_session_is_its_role(expected, found):
    assert principal_matches(f"arn:aws:sts::{ACCOUNT}:assumed-role/host/i-1", expected) is found


def test_a_versioned_bucket_with_a_delete_marker_can_be_emptied(emulator):
    """What Terraform's destroy does after Orthanc deleted an object: versioning suspended (its resource
    goes first), then force_destroy deletes every version in one batch (moto answered 500)."""
    s3 = boto3.client("s3", **emulator.boto_kwargs())
    s3.create_bucket(Bucket="versioned")
    s3.put_bucket_versioning(Bucket="versioned", VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket="versioned", Key="k", Body=b"x")
    s3.delete_object(Bucket="versioned", Key="k")
    versions = s3.list_object_versions(Bucket="versioned")
    listed = [(v["Key"], v["VersionId"]) for v in versions.get("Versions", []) + versions.get("DeleteMarkers", [])]
    assert len(listed) == 2
    s3.put_bucket_versioning(Bucket="versioned", VersioningConfiguration={"Status": "Suspended"})
    objects = [{"Key": key, "VersionId": version} for key, version in listed]
    assert not s3.delete_objects(Bucket="versioned", Delete={"Objects": objects}).get("Errors")
    s3.delete_bucket(Bucket="versioned")
    assert "versioned" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_a_bucket_policy_deny_refuses_whatever_iam_allows(emulator):
    """A bucket policy's Deny for every principal but one role: a role allowed s3:* by IAM is refused,
    the named role is not; a Deny on a condition key the emulator does not know is not judged
    (it is a stand-in there: docs/security.md), and without enforcement nothing is judged."""
    admin = emulator.boto_kwargs()
    s3, iam = boto3.client("s3", **admin), boto3.client("iam", **admin)
    s3.create_bucket(Bucket="studies")
    s3.put_object(Bucket="studies", Key="a.dcm", Body=b"DICM")
    roles = {}
    for name in ("orthanc", "cloud-admin"):
        roles[name] = iam.create_role(RoleName=name, AssumeRolePolicyDocument=_trust({"AWS": ACCOUNT}))["Role"]["Arn"]
        iam.put_role_policy(RoleName=name, PolicyName="p", PolicyDocument=_allow([("s3:*", "*")]))
    only_orthanc = {
        "Sid": "OnlyNamed",
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": ["s3:GetObject", "s3:PutObject"],
        "Resource": "arn:aws:s3:::studies/*",
        "Condition": {"ArnNotLike": {"aws:PrincipalArn": [roles["orthanc"]]}},
    }
    unknown = {**only_orthanc, "Sid": "Unknown", "Condition": {"StringEquals": {"aws:SourceVpce": "vpce-1"}}}
    s3.put_bucket_policy(Bucket="studies", Policy=json.dumps({"Version": "2012-10-17", "Statement": [only_orthanc]}))
    sessions = {
        name: _session(emulator, arn).client("s3", endpoint_url=emulator.endpoint) for name, arn in roles.items()
    }
    with emulator.iam_enforced():
        assert sessions["orthanc"].get_object(Bucket="studies", Key="a.dcm")["Body"].read() == b"DICM"
        assert _code(lambda: sessions["cloud-admin"].get_object(Bucket="studies", Key="a.dcm")) == "AccessDenied"
        assert _code(lambda: sessions["cloud-admin"].put_object(Bucket="studies", Key="b", Body=b"x")) == "AccessDenied"
        assert sessions["cloud-admin"].list_objects_v2(Bucket="studies")["KeyCount"] == 1  # not denied
    s3.put_bucket_policy(Bucket="studies", Policy=json.dumps({"Version": "2012-10-17", "Statement": [unknown]}))
    with emulator.iam_enforced():
        assert sessions["cloud-admin"].get_object(Bucket="studies", Key="a.dcm")["Body"].read() == b"DICM"


def test_a_prefix_list_grant_reads_that_list_only(emulator):
    """EC2's GetManagedPrefixListEntries is authorized against the list's ARN, as AWS does: the host's
    grant on S3's list reads it, and no other list."""
    admin = emulator.boto_kwargs()
    ec2, iam = boto3.client("ec2", **admin), boto3.client("iam", **admin)
    lists = {pl["PrefixListName"]: pl for pl in ec2.describe_managed_prefix_lists()["PrefixLists"]}
    s3_list, other = lists[f"com.amazonaws.{emulator.region}.s3"], lists[f"com.amazonaws.{emulator.region}.dynamodb"]
    iam.create_role(RoleName="ranges-reader", AssumeRolePolicyDocument=_trust({"AWS": ACCOUNT}))
    iam.put_role_policy(
        RoleName="ranges-reader",
        PolicyName="p",
        PolicyDocument=_allow([("ec2:GetManagedPrefixListEntries", s3_list["PrefixListArn"])]),
    )
    reader = _session(emulator, f"arn:aws:iam::{ACCOUNT}:role/ranges-reader").client(
        "ec2", endpoint_url=emulator.endpoint
    )
    with emulator.iam_enforced():
        entries = reader.get_managed_prefix_list_entries(PrefixListId=s3_list["PrefixListId"])["Entries"]
        assert entries
        refused = _code(lambda: reader.get_managed_prefix_list_entries(PrefixListId=other["PrefixListId"]))
        assert "Unauthorized" in refused or "AccessDenied" in refused
