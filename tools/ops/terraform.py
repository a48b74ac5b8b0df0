"""Run the real Terraform CLI: offline from a local provider mirror when there is one, else from the registry.

The CLI config is written to a folder we own (never the user's home) and passed through
``TF_CLI_CONFIG_FILE``. Where a filesystem mirror holds the provider (CI), it comes from there and
nothing is downloaded; elsewhere Terraform installs from the registry into one plugin cache in the
project (``build/terraform-plugin-cache``), so each provider is downloaded once.

``python -m tools.ops.terraform cdktf <command> [flags]`` runs the pinned cdktf CLI the same way
(the Makefile's diff/deploy/destroy/output targets).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from config import ROOT

PROVIDER_GLOB = "registry.terraform.io/hashicorp/aws/*/linux_amd64/terraform-provider-aws_v*"
MIRROR_CANDIDATES = (
    "/opt/tf-plugins",
    "/usr/share/terraform/plugins",
    "/usr/local/share/terraform/plugins",
    "~/.terraform.d/plugins",
)
# Without a mirror: the registry, with one plugin cache for every Terraform run of the project.
PLUGIN_CACHE = ROOT / "build" / "terraform-plugin-cache"
# Where the cdktf targets write their CLI configuration (the same folder as the test suite's).
CDKTF_CLI_FOLDER = ROOT / "build" / "terraform-cli"
# The cdktf commands that run `terraform providers lock` and accept --skip-provider-lock (cdktf-cli 0.21.0).
SKIP_LOCK_COMMANDS = frozenset({"diff", "deploy", "destroy", "output"})


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


def provider_mirror(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The filesystem mirror to install from, or None: then Terraform installs from the registry.

    ``ORTHWEB_TF_MIRROR`` is a choice, not a hint: a folder without the provider is an error."""
    try:
        return find_mirror(environ)
    except TerraformError:
        if environ.get("ORTHWEB_TF_MIRROR"):
            raise
        return None


def write_cli_config(folder: Path, mirror: Path | None, plugin_cache: Path = PLUGIN_CACHE) -> Path:
    """``folder/terraform.rc``: the providers from ``mirror`` (offline), or with no mirror from the
    registry through ``plugin_cache`` (created here: Terraform refuses a cache folder that does not exist)."""
    if mirror is not None:
        return _write(
            folder / "terraform.rc",
            "provider_installation {\n"
            f'  filesystem_mirror {{\n    path    = "{mirror}"\n'
            '    include = ["registry.terraform.io/hashicorp/*"]\n  }\n'
            '  direct {\n    exclude = ["registry.terraform.io/hashicorp/*"]\n  }\n'
            "}\n",
        )
    plugin_cache.mkdir(parents=True, exist_ok=True)
    return _write(
        folder / "terraform.rc",
        f"plugin_cache_dir = {json.dumps(str(plugin_cache))}\n"
        # Since Terraform 1.4 a cached provider is reused only when a lock file already records it;
        # our working folders are fresh (no lock file), so without this every init downloads again.
        "plugin_cache_may_break_dependency_lock_file = true\n"
        "provider_installation {\n  direct {}\n}\n",
    )


def _write(path: Path, text: str) -> Path:
    """Replace ``path`` at once: a Terraform running in parallel never reads a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(staging, 0o644)
    os.replace(staging, path)
    return path


def terraform_cli_config(folder: Path, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The CLI configuration in ``folder``: offline from the provider mirror, or from the registry
    with the project's plugin cache when there is no mirror. None when ``ORTHWEB_TF_MIRROR`` names a
    folder without the provider (``Terraform.offline`` then says so)."""
    try:
        return write_cli_config(folder, provider_mirror(environ))
    except TerraformError:
        return None


def cdktf_command(
    command: str, flags: Sequence[str], environ: Mapping[str, str] = os.environ, folder: Path = CDKTF_CLI_FOLDER
) -> tuple[list[str], dict[str, str]]:
    """The pinned cdktf CLI's command line and environment for ``cdktf <command> <flags>``.

    With a filesystem mirror (offline), Terraform gets the mirror's CLI configuration (unless
    ``TF_CLI_CONFIG_FILE`` already names an existing file: the user's choice) and the commands that
    would run ``terraform providers lock``, which asks the registry for every platform's checksums,
    get ``--skip-provider-lock``. Without a mirror nothing changes: Terraform's own configuration
    and the registry."""
    env = dict(environ)
    argv = ["npx", "cdktf", command]
    mirror = provider_mirror(environ)
    if mirror is not None:
        own = environ.get("TF_CLI_CONFIG_FILE")
        if not (own and Path(own).is_file()):
            env["TF_CLI_CONFIG_FILE"] = str(write_cli_config(folder, mirror))
        if command in SKIP_LOCK_COMMANDS and "--skip-provider-lock" not in flags:
            argv.append("--skip-provider-lock")
    return [*argv, *flags], env


@dataclass
class Terraform:
    """Terraform in one working directory (a synthesized stack folder)."""

    workdir: Path
    cli_config: Path
    extra_env: Mapping[str, str] | None = None
    log_dir: Path | None = None
    # The shared plugin cache when providers come from the registry (no mirror).
    plugin_cache: Path | None = None

    @classmethod
    def offline(
        cls, workdir: Path, scratch: Path, extra_env: Mapping[str, str] | None = None, log_dir: Path | None = None
    ) -> Terraform:
        """Offline from the provider mirror (CI); on a machine without one, from the registry through
        the project's plugin cache."""
        if not shutil.which("terraform"):
            raise TerraformError("terraform is not on PATH (install Terraform 1.11: see README)")
        mirror = provider_mirror()
        cache = PLUGIN_CACHE if mirror is None else None
        return cls(workdir, write_cli_config(scratch, mirror), extra_env, log_dir, cache)

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
        if self.plugin_cache is None:
            self.run("init", "-no-color", "-input=false")
            return
        # The plugin cache is not safe for concurrent inits (hashicorp/terraform#31964): one at a time.
        self.plugin_cache.parent.mkdir(parents=True, exist_ok=True)
        with open(self.plugin_cache.with_name(self.plugin_cache.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
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


def main(argv: Sequence[str] | None = None) -> int:
    """``cdktf <command> [flags...]``: run the pinned cdktf CLI as ``cdktf_command`` describes."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "cdktf":
        print("usage: python -m tools.ops.terraform cdktf <command> [flags...]", file=sys.stderr)
        return 2
    try:
        command, env = cdktf_command(args[1], args[2:])
    except TerraformError as error:
        print(f"orthweb: {error}", file=sys.stderr)
        return 1
    if "--skip-provider-lock" in command and "--skip-provider-lock" not in args:
        print(f"orthweb: provider from a filesystem mirror, offline: {' '.join(command)}", file=sys.stderr)
    sys.stdout.flush()
    os.execvpe(command[0], command, env)  # noqa: S606 - replaces this process with the cdktf CLI


if __name__ == "__main__":
    sys.exit(main())
