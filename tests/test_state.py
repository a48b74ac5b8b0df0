"""Where Terraform keeps the state: the local file by default (a path relative to the stack folder,
so the project can move), or the S3 bucket of ``state_bucket`` with Terraform's own lock file; the
one-time ``make state-bucket`` command; the backend proven with real Terraform against the AWS API
emulator (init, a plan that writes and releases the lock, a held lock refusing a second writer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from config import ROOT
from config.inputs import ConfigError, OrthwebConfig
from main import main as synth_main
from stacks.state import state_object_key
from tests.conftest import synth_json
from tools.harness.emulator import Emulator
from tools.ops.terraform import Terraform, TerraformError

KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/0b1d2c3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e"


def test_local_state_by_default_relative_to_the_stack_folder(default_stack):
    path = default_stack.data["terraform"]["backend"]["local"]["path"]
    assert not Path(path).is_absolute()
    assert (default_stack.stack_dir / path).resolve() == ROOT / "terraform.orthweb.tfstate"


def test_s3_backend_with_lock_file_and_the_state_key(tmp_path):
    config = OrthwebConfig(name="radiology", region="eu-west-1", state_bucket="team-state", state_kms_key=KEY_ARN)
    backend = synth_json(config.validate(), tmp_path)["terraform"]["backend"]
    assert set(backend) == {"s3"}
    s3 = backend["s3"]
    assert (s3["bucket"], s3["key"], s3["region"]) == ("team-state", "orthweb/radiology/terraform.tfstate", "eu-west-1")
    assert s3["encrypt"] is True and s3["kms_key_id"] == KEY_ARN and s3["use_lockfile"] is True
    assert "dynamodb_table" not in s3 and "endpoints" not in s3


@pytest.mark.parametrize(
    "settings, named",
    [({"state_bucket": "team-state"}, "state_kms_key"), ({"state_kms_key": KEY_ARN}, "state_bucket")],
)
def test_bucket_and_key_only_together(settings, named):
    with pytest.raises(ConfigError) as caught:
        OrthwebConfig(**settings).validate()
    assert any(p.startswith(f"{named}:") and "together" in p for p in caught.value.problems)


def test_a_bad_bucket_name_exits_2_and_writes_nothing(tmp_path, capsys):
    outdir = tmp_path / "out"
    env = {"ORTHWEB_STATE_BUCKET": "Team_State", "ORTHWEB_STATE_KMS_KEY": KEY_ARN, "CDKTF_OUTDIR": str(outdir)}
    assert synth_main(env) == 2
    assert "state_bucket: 'Team_State' is not allowed; allowed: empty, or an S3 bucket name" in capsys.readouterr().err
    assert not outdir.exists()


# -- against the AWS API emulator, with real Terraform ------------------------------------------------


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with Emulator(tmp_path_factory.mktemp("emulator")) as emu:
        yield emu


def state_bucket_command(emulator: Emulator, *args: str) -> subprocess.CompletedProcess:
    """``make state-bucket`` underneath, as an operator runs it (against the emulator here)."""
    env = {**os.environ, **{k: v for k, v in emulator.client_env().items() if k != "AWS_ENDPOINT_URL"}}
    return subprocess.run(
        [sys.executable, "-m", "tools.ops.state_bucket", "--name", "orthweb", "--region", emulator.region,
         "--endpoint-url", emulator.endpoint, *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip


@pytest.mark.terraform
def test_state_bucket_command_creates_a_safe_bucket_once(emulator):
    import boto3

    first = state_bucket_command(emulator)
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout and 'state_bucket = "orthweb-tfstate-' in first.stdout
    again = state_bucket_command(emulator)
    assert again.returncode == 0 and "already yours" in again.stdout
    key_arn = next(line.split('"')[1] for line in first.stdout.splitlines() if "state_kms_key =" in line)
    assert key_arn in again.stdout, "the second run found the same key"
    bucket = next(line.split('"')[1] for line in first.stdout.splitlines() if "state_bucket =" in line)
    s3 = boto3.client("s3", **emulator.boto_kwargs())
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn}
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    kms = boto3.client("kms", **emulator.boto_kwargs())
    assert kms.get_key_rotation_status(KeyId=key_arn)["KeyRotationEnabled"] is True


@pytest.mark.terraform
def test_bad_arguments_exit_2_naming_the_option(emulator):
    refused = state_bucket_command(emulator, "--bucket", "Not_A_Bucket")
    assert refused.returncode == 2 and "--bucket: 'Not_A_Bucket' is not allowed" in refused.stderr


@pytest.mark.terraform
def test_terraform_keeps_the_state_in_the_bucket_under_its_lock(emulator, tmp_path):
    import boto3

    made = state_bucket_command(emulator, "--bucket", "orthweb-team-state")
    assert made.returncode == 0, made.stderr
    key_arn = next(line.split('"')[1] for line in made.stdout.splitlines() if "state_kms_key =" in line)
    config = OrthwebConfig(
        target="emulator", emulator_endpoint=emulator.endpoint, state_bucket="orthweb-team-state", state_kms_key=key_arn
    ).validate()
    synth_json(config, tmp_path / "out")
    tf = Terraform.offline(tmp_path / "out" / "stacks" / "orthweb", tmp_path / "cli")
    tf.init()  # the real S3 backend, configured from the synthesized JSON
    s3 = boto3.client("s3", **emulator.boto_kwargs())
    lock = state_object_key("orthweb") + ".tflock"
    # Another writer holds the lock: Terraform refuses to plan.
    s3.put_object(
        Bucket="orthweb-team-state",
        Key=lock,
        Body=json.dumps({"ID": "someone-else", "Operation": "OperationTypeApply", "Who": "colleague@laptop"}),
    )
    with pytest.raises(TerraformError, match="(?i)lock"):
        tf.run("plan", "-no-color", "-input=false", "-lock-timeout=0s", "-refresh=false", "-out=held.tfplan")
    s3.delete_object(Bucket="orthweb-team-state", Key=lock)
    # Free again: the plan takes the lock and gives it back; the state is in the bucket, under the state key.
    tf.run("plan", "-no-color", "-input=false", "-out=free.tfplan")
    tf.run("apply", "-no-color", "-input=false", "-target=aws_kms_key.session_key", "-auto-approve")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="orthweb-team-state").get("Contents", [])]
    assert keys == [state_object_key("orthweb")], keys
    head = s3.head_object(Bucket="orthweb-team-state", Key=state_object_key("orthweb"))
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == key_arn
