"""Where Terraform keeps the site's state: the one place that decides the backend.

Local by default, in ``terraform.<name>.tfstate`` at the project root, named relative to the
synthesized stack folder (where ``cdktf`` and ``terraform`` run), so the project can move and a
teammate's checkout finds the same file. With ``state_bucket``, the S3 backend: encrypted with the
state key (``state_kms_key``), locked by Terraform's own lock file next to the state
(``use_lockfile``, Terraform 1.10 and later; no DynamoDB table), one state object per site name.
``make state-bucket`` creates that bucket and key once (tools/ops/state_bucket.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from cdktf import LocalBackend, S3Backend, TerraformStack

from config import ROOT
from config.inputs import OrthwebConfig


def state_object_key(name: str) -> str:
    """The state's object key in the bucket: one per site name."""
    return f"orthweb/{name}/terraform.tfstate"


def local_state_path(stack_dir: Path, name: str) -> str:
    """``terraform.<name>.tfstate`` at the project root, relative to the stack folder."""
    return os.path.relpath(ROOT / f"terraform.{name}.tfstate", stack_dir.resolve())


def configure_backend(stack: TerraformStack, config: OrthwebConfig, stack_dir: Path, state_path: str | None) -> None:
    """``state_path`` (a rehearsal's own file) wins; then the bucket; else the local file."""
    if state_path:
        LocalBackend(stack, path=state_path)
    elif config.state_bucket:
        S3Backend(
            stack,
            bucket=config.state_bucket,
            key=state_object_key(config.name),
            region=config.region,
            encrypt=True,
            kms_key_id=config.state_kms_key,
        )
        # Terraform's native S3 lock (a .tflock object beside the state); cdktf 0.21 predates it.
        stack.add_override("terraform.backend.s3.use_lockfile", True)
        if config.target == "emulator":
            from stacks.emulator import backend_settings

            for key, value in backend_settings(config.emulator_endpoint).items():
                stack.add_override(f"terraform.backend.s3.{key}", value)
    else:
        LocalBackend(stack, path=local_state_path(stack_dir, config.name))
