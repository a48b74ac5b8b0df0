"""Create, once, the S3 bucket and KMS key that hold a team's Terraform state.

    python -m tools.ops.state_bucket [--name N] [--region R] [--bucket B]     (make state-bucket)

What it makes (with your AWS credentials; it never deletes anything, and running it again only
re-applies the settings): a customer KMS key with rotation, alias ``alias/<name>-tfstate``; a
bucket (default ``<name>-tfstate-<account>-<region>``) owned by this account and only this account
(ACLs off), public access blocked, versioning on (every earlier state is kept: the record of a PHI
system), encrypted by default with that key (bucket key on), a policy refusing plain HTTP and
objects under any other key, unfinished uploads removed after 7 days. It refuses a bucket name that
exists in another account. It ends by printing the two settings for orthweb.toml and how to move
an existing local state into the bucket. Exit codes: 0 done, 1 AWS problem, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from config.inputs import ConfigError, field_problems
from stacks.state import state_object_key

KEY_ALIAS = "alias/{name}-tfstate"
BUCKET_NAME = "{name}-tfstate-{account}-{region}"


class StateBucketError(RuntimeError):
    pass


def bucket_policy(bucket: str, key_arn: str) -> dict[str, Any]:
    """TLS only; objects only under the state key (no SSE-S3, no other key, no SSE-C)."""
    arn = f"arn:aws:s3:::{bucket}"
    statements: list[dict[str, Any]] = [
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [arn, f"{arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
        {
            "Sid": "DenyOtherKeys",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": f"{arn}/*",
            "Condition": {"StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption-aws-kms-key-id": key_arn}},
        },
        {
            "Sid": "DenyCustomerProvidedKeys",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": f"{arn}/*",
            "Condition": {"Null": {"s3:x-amz-server-side-encryption-customer-algorithm": "false"}},
        },
    ]
    return {"Version": "2012-10-17", "Statement": statements}


class StateBucket:
    def __init__(self, name: str, region: str, bucket: str | None, endpoint_url: str | None = None):
        from tools.ops.site import client

        self.name, self.region, self.endpoint_url = name, region, endpoint_url
        self.s3 = client("s3", region, endpoint_url)
        self.kms = client("kms", region, endpoint_url)
        self.account = client("sts", region, endpoint_url).get_caller_identity()["Account"]
        self.bucket = bucket or BUCKET_NAME.format(name=name, account=self.account, region=region)

    def key(self) -> str:
        """The state key's ARN: the existing alias's key, or a new key with rotation."""
        alias = KEY_ALIAS.format(name=self.name)
        for page in self.kms.get_paginator("list_aliases").paginate():
            for entry in page["Aliases"]:
                if entry["AliasName"] == alias and entry.get("TargetKeyId"):
                    arn: str = self.kms.describe_key(KeyId=entry["TargetKeyId"])["KeyMetadata"]["Arn"]
                    return arn
        created = self.kms.create_key(
            Description=f"Terraform state of the Orthweb site {self.name}",
            Tags=[{"TagKey": "Application", "TagValue": "orthweb"}, {"TagKey": "Name", "TagValue": self.name}],
        )["KeyMetadata"]
        self.kms.enable_key_rotation(KeyId=created["KeyId"])
        self.kms.create_alias(AliasName=alias, TargetKeyId=created["KeyId"])
        new_arn: str = created["Arn"]
        return new_arn

    def ensure_bucket(self) -> bool:
        """Create the bucket unless this account already owns it; True when created."""
        from botocore.exceptions import ClientError

        try:
            self.s3.head_bucket(Bucket=self.bucket, ExpectedBucketOwner=self.account)
            return False
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise StateBucketError(
                    f"bucket {self.bucket} exists and is not this account's ({code}); choose another with --bucket"
                ) from exc
        settings: dict[str, Any] = {"Bucket": self.bucket, "ObjectOwnership": "BucketOwnerEnforced"}
        if self.region != "us-east-1":
            settings["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self.s3.create_bucket(**settings)
        return True

    def secure(self, key_arn: str) -> None:
        s3, bucket = self.s3, self.bucket
        s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn},
                        "BucketKeyEnabled": True,
                    }
                ]
            },
        )
        s3.put_bucket_lifecycle_configuration(
            Bucket=bucket,
            LifecycleConfiguration={
                "Rules": [
                    {
                        "ID": "abort-incomplete-uploads",
                        "Status": "Enabled",
                        "Filter": {"Prefix": ""},
                        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
                    }
                ]
            },
        )
        policy = bucket_policy(bucket, key_arn)
        s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    def run(self) -> list[str]:
        key_arn = self.key()
        created = self.ensure_bucket()
        self.secure(key_arn)
        return [
            f"state bucket {self.bucket} {'created' if created else 'already yours: settings re-applied'}"
            f" ({self.region}, versioned, SSE-KMS, TLS only, public access blocked)",
            f"state key {key_arn} (rotation on)",
            "",
            "Add to orthweb.toml (or ORTHWEB_STATE_BUCKET / ORTHWEB_STATE_KMS_KEY):",
            f'  state_bucket = "{self.bucket}"',
            f'  state_kms_key = "{key_arn}"',
            "",
            f"The state object: s3://{self.bucket}/{state_object_key(self.name)} (lock: the same key + .tflock).",
            "Moving an existing local state there, once:",
            f"  make synth && cd cdktf.out/stacks/{self.name} && terraform init -migrate-state",
        ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.ops.state_bucket", description=__doc__.split("\n")[0])
    p.add_argument("--name", help="the site's name (default: the project's config)")
    p.add_argument("--region", help="the region for the bucket and key (default: the site's region)")
    p.add_argument("--bucket", help="bucket name (default: <name>-tfstate-<account>-<region>)")
    p.add_argument("--endpoint-url", default=None, help=argparse.SUPPRESS)  # the AWS API emulator in tests
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    from tools.ops.site import project_config

    try:
        config = project_config()
    except ConfigError as exc:
        p.error("; ".join(exc.problems))
    name, region = a.name or config.name, a.region or config.region
    problems = field_problems("name", name, "--name") + field_problems("region", region, "--region")
    if a.bucket:
        problems += field_problems("state_bucket", a.bucket, "--bucket")
    if problems:
        p.error("; ".join(problems))
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        lines = StateBucket(name, region, a.bucket, a.endpoint_url).run()
    except (StateBucketError, BotoCoreError, ClientError) as exc:
        print(f"state-bucket: error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
