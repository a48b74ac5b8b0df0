"""What the operator commands share: the site this checkout deploys, and AWS clients for it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from config import ROOT
from config.inputs import ConfigError, OrthwebConfig, load_config


def project_config() -> OrthwebConfig:
    """The site as ``make synth`` reads it: defaults, orthweb.toml, ORTHWEB_* variables.

    Raises ConfigError (its problems name the fields) on bad input."""
    return load_config(ROOT, os.environ)


def on_loopback(endpoint_url: str | None) -> bool:
    """The AWS API emulator on loopback (the local site, tests), not an AWS account."""
    import ipaddress
    from urllib.parse import urlparse

    host = urlparse(endpoint_url or "").hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class NoCredentials(RuntimeError):
    """The operator has no AWS credentials: a matter of their environment, not of the site (exit 2)."""


# Where `make local-up` records the local site it started (its outputs file, its emulator), which
# `make validate SITE=local` and the other commands read.
LOCAL_SITE_STATE = Path(os.environ.get("ORTHWEB_LOCALSITE_DIR", ROOT / "build" / "localsite")) / "site.json"
NO_CREDENTIALS = (
    "no AWS credentials found (environment, AWS_PROFILE, ~/.aws, SSO): sign in to the site's account "
    "(for example aws sso login --profile NAME, then AWS_PROFILE=NAME) and run it again"
)


def require_credentials(endpoint_url: str | None = None) -> None:
    """Raise NoCredentials, before any call, when the operator has none for a real account."""
    import boto3

    if not on_loopback(endpoint_url) and boto3.Session().get_credentials() is None:
        raise NoCredentials(NO_CREDENTIALS)


def client(service: str, region: str | None, endpoint_url: str | None = None) -> Any:
    """A boto3 client with the operator's own AWS credentials; for the AWS API emulator on loopback
    (the local site, tests), its placeholder keys, so no real credential is ever sent there."""
    import boto3

    from config.facts import EMULATOR_PLACEHOLDER_KEY

    kwargs: dict[str, Any] = {"region_name": region, "endpoint_url": endpoint_url}
    if on_loopback(endpoint_url):
        kwargs |= {"aws_access_key_id": EMULATOR_PLACEHOLDER_KEY, "aws_secret_access_key": EMULATOR_PLACEHOLDER_KEY}
    return boto3.client(service, **kwargs)


class SiteUnreadable(RuntimeError):
    """The outputs or the secrets could not be read (a FAIL line, exit 1)."""


class NoOutputs(SiteUnreadable):
    """There is no deployed site to read here: nothing synthesized, nothing deployed, no local site
    up, or outputs of an older stack. A matter of what the operator ran first, not of the site (exit 2)."""


def output_values(raw: dict[str, Any]) -> dict[str, Any]:
    """``terraform output -json`` / ``cdktf output --outputs-file`` (keyed by stack) -> name: value."""
    if "site_url" not in raw and len(raw) == 1:
        raw = next(iter(raw.values()))
    return {k: v["value"] if isinstance(v, dict) and "value" in v else v for k, v in raw.items()}


def deployed_outputs(stack_dir: Path) -> dict[str, Any]:
    """The outputs of the deployed stack, read by Terraform from its backend (local file or S3)."""
    from tools.ops.terraform import Terraform, TerraformError

    if not (stack_dir / "cdk.tf.json").is_file():
        raise NoOutputs(f"no synthesized stack in {stack_dir}: run make synth (or make validate) first")
    try:
        tf = Terraform.offline(stack_dir, stack_dir.parent.parent / ".terraform-cli")
        if not (stack_dir / ".terraform").is_dir():
            tf.init()
        raw = json.loads(tf.run("output", "-json").stdout or "{}")
    except TerraformError as exc:
        raise SiteUnreadable(f"terraform could not read the outputs: {str(exc)[-600:]}") from exc
    if not raw:
        raise NoOutputs(f"the stack in {stack_dir} has no outputs: deploy it first (make deploy)")
    return output_values(raw)


def site_outputs(outputs_file: Path | None = None) -> dict[str, Any]:
    """The outputs of ``outputs_file``, or of the stack this checkout deployed."""
    if outputs_file is not None:
        return output_values(json.loads(outputs_file.read_text()))
    return deployed_outputs(ROOT / "cdktf.out" / "stacks" / project_config().name)


__all__ = [
    "ConfigError",
    "NoCredentials",
    "require_credentials",
    "NoOutputs",
    "SiteUnreadable",
    "client",
    "deployed_outputs",
    "output_values",
    "project_config",
    "site_outputs",
]
