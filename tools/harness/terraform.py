"""Run the real Terraform CLI offline against the local provider mirror.

The CLI config is written to a folder we own (never the user's home) and passed through
``TF_CLI_CONFIG_FILE``; the provider comes from a filesystem mirror, so nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROVIDER_GLOB = "registry.terraform.io/hashicorp/aws/*/linux_amd64/terraform-provider-aws_v*"
MIRROR_CANDIDATES = (
    "/opt/tf-plugins",
    "/usr/share/terraform/plugins",
    "/usr/local/share/terraform/plugins",
    "~/.terraform.d/plugins",
)


class TerraformError(RuntimeError):
    """A terraform command failed; the message carries its output."""


def find_mirror(environ: Mapping[str, str] = os.environ) -> Path:
    """The provider mirror root: ``ORTHWEB_TF_MIRROR`` or the first known folder holding the AWS provider."""
    candidates = [environ["ORTHWEB_TF_MIRROR"]] if environ.get("ORTHWEB_TF_MIRROR") else list(MIRROR_CANDIDATES)
    for candidate in candidates:
        root = Path(candidate).expanduser()
        if any(root.glob(PROVIDER_GLOB)):
            return root
    raise TerraformError(
        f"no hashicorp/aws provider in a filesystem mirror; looked in {', '.join(candidates)}"
        " (set ORTHWEB_TF_MIRROR to the folder that contains registry.terraform.io)"
    )


def write_cli_config(folder: Path, mirror: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "terraform.rc"
    path.write_text(
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path    = "{mirror}"\n    include = ["registry.terraform.io/hashicorp/*"]\n  }}\n'
        '  direct {\n    exclude = ["registry.terraform.io/hashicorp/*"]\n  }\n'
        "}\n"
    )
    return path


def terraform_cli_config(folder: Path) -> Path | None:
    """The offline CLI configuration in ``folder``, or None on a machine without a provider mirror."""
    try:
        return write_cli_config(folder, find_mirror())
    except TerraformError:
        return None


@dataclass
class Terraform:
    """Terraform in one working directory (a synthesized stack folder)."""

    workdir: Path
    cli_config: Path
    extra_env: Mapping[str, str] | None = None
    log_dir: Path | None = None

    @classmethod
    def offline(
        cls, workdir: Path, scratch: Path, extra_env: Mapping[str, str] | None = None, log_dir: Path | None = None
    ) -> Terraform:
        if not shutil.which("terraform"):
            raise TerraformError("terraform is not on PATH (install Terraform 1.11: see README)")
        return cls(workdir, write_cli_config(scratch, find_mirror()), extra_env, log_dir)

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "TF_CLI_CONFIG_FILE": str(self.cli_config),
            "CHECKPOINT_DISABLE": "1",
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
        }
        env.update(self.extra_env or {})
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["terraform", *args], cwd=self.workdir, env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / f"terraform-{args[0]}.log", "a") as log:
                log.write(f"$ terraform {' '.join(args)}\n{proc.stdout}\n{proc.stderr}\nexit {proc.returncode}\n")
        if check and proc.returncode != 0:
            raise TerraformError(
                f"terraform {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}\n"
                f"--- last output ---\n{proc.stdout[-2000:]}"
            )
        return proc

    def init(self) -> None:
        self.run("init", "-no-color", "-input=false")

    def validate(self) -> dict:
        proc = self.run("validate", "-json", "-no-color", check=False)
        result = json.loads(proc.stdout)
        if not result.get("valid"):
            raise TerraformError("terraform validate found problems:\n" + json.dumps(result["diagnostics"], indent=1))
        return result

    def plan_json(self, planfile: str = "plan.tfplan", args: Sequence[str] = ()) -> dict:
        self.run("plan", "-no-color", "-lock=false", f"-out={planfile}", *args)
        return json.loads(self.run("show", "-json", planfile).stdout)
