"""The AWS API emulator (moto server) on a free loopback port.

A stand-in for AWS itself: it lets Terraform plan and apply, and the host bootstrap run, with no
account. It is never used for a real deployment (config refuses non-loopback endpoints).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from config import ROOT
from config.facts import EMULATOR_PLACEHOLDER_KEY
from tools.proc import free_port, stop_process

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": EMULATOR_PLACEHOLDER_KEY, "AWS_SECRET_ACCESS_KEY": EMULATOR_PLACEHOLDER_KEY}


class Emulator:
    """Start with ``with Emulator(log_dir) as emu:``; ``emu.endpoint`` is its URL.

    ``managed_policies`` loads AWS's managed IAM policies, which attaching one needs (a Terraform apply
    of the stack does). Only then: loading them costs the emulator ~0.7 CPU-s on its first request."""

    def __init__(
        self, log_dir: Path, port: int | None = None, region: str = "us-east-1", managed_policies: bool = False
    ):
        self.log_dir = log_dir
        self.managed_policies = managed_policies
        self.port = port or free_port()
        self.region = region
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        # The keys clients are made with: the placeholder ones until ``operator`` replaces them.
        self.credentials = dict(FAKE_CREDENTIALS)

    def client_env(self) -> dict[str, str]:
        """Environment for AWS SDK/CLI clients talking to the emulator."""
        return {
            **self.credentials,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def s3_prefix_list(self) -> tuple[str, str]:
        """The ID and ARN of the region's AWS-managed S3 prefix list, as the emulator holds it."""
        import boto3

        ec2 = boto3.client("ec2", **self.boto_kwargs())
        named = [{"Name": "prefix-list-name", "Values": [f"com.amazonaws.{self.region}.s3"]}]
        found = ec2.describe_managed_prefix_lists(Filters=named)["PrefixLists"][0]
        return str(found["PrefixListId"]), str(found["PrefixListArn"])

    def boto_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``boto3.client`` talking to the emulator."""
        return {
            "region_name": self.region,
            "endpoint_url": self.endpoint,
            "aws_access_key_id": self.credentials["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": self.credentials["AWS_SECRET_ACCESS_KEY"],
        }

    def start(self, timeout: float = 60) -> Emulator:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "MOTO_IAM_LOAD_MANAGED_POLICIES": str(self.managed_policies).lower(),
            **FAKE_CREDENTIALS,
        }
        log = open(self.log_dir / "emulator.log", "ab")
        # moto's server with its IAM checks brought closer to AWS's (tools/harness/moto_server.py).
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tools.harness.moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"emulator exited early; see {self.log_dir / 'emulator.log'}")
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2)  # noqa: S310 - loopback http
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"emulator did not answer within {timeout}s")

    def stop(self) -> None:
        stop_process(self.process, timeout=10)

    def assume_role(self, role_arn: str, session: str) -> dict[str, str]:
        """Credentials of a session of ``role_arn``, as the environment of an AWS client.

        STAND-IN for what EC2 does for an instance profile: the session is made with the keys the
        clients use (before IAM is enforced, the placeholder ones)."""
        import boto3

        sts = boto3.client("sts", **self.boto_kwargs())
        c = sts.assume_role(RoleArn=role_arn, RoleSessionName=session)["Credentials"]
        return {
            "AWS_ACCESS_KEY_ID": c["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": c["SecretAccessKey"],
            "AWS_SESSION_TOKEN": c["SessionToken"],
        }

    def operator(self, name: str = "operator") -> None:
        """An IAM user allowed everything, whose keys every client made from now on uses: the
        operator and Terraform of a site whose own roles run under ``enforce_iam``."""
        import boto3

        iam = boto3.client("iam", **self.boto_kwargs())
        iam.create_user(UserName=name)
        everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName=name, PolicyName="everything", PolicyDocument=json.dumps(everything))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        self.credentials = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

    def enforce_iam(self, on: bool = True) -> None:
        """Check every request against the caller's IAM identity policies (``on``), or accept all.

        With it on, the placeholder keys are refused like any unknown key: callers need credentials
        of a role from the emulated account (STS AssumeRole while it is off)."""
        request = urllib.request.Request(  # noqa: S310 - loopback http
            f"{self.endpoint}/moto-api/reset-auth",
            data=b"0" if on else b"inf",
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form body would be parsed away before moto reads it
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback http
            answer.read()

    @contextlib.contextmanager
    def iam_enforced(self) -> Iterator[None]:
        self.enforce_iam(True)
        try:
            yield
        finally:
            self.enforce_iam(False)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
