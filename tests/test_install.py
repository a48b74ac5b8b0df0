"""The README's commands on an ordinary machine: pipenv lives in a project virtualenv, never in the
system Python (which PEP 668 closes to pip), and the cdktf targets find their way offline by
themselves when the provider comes from a filesystem mirror."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from config import ROOT
from tools.ops.terraform import SKIP_LOCK_COMMANDS, TerraformError, cdktf_command, terraform_cli_config

_PINNED = re.search(r"^PIPENV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
assert _PINNED, "the Makefile pins pipenv"
PIPENV_VERSION = _PINNED.group(1)
# The files `make setup` reads, copied into a scratch project (with an empty Pipfile) for the bootstrap tests.
SETUP_FILES = ("Makefile", "tools/bootstrap-constraints.txt")
EMPTY_PIPFILE = '[[source]]\nurl = "https://pypi.org/simple"\nverify_ssl = true\nname = "pypi"\n\n[packages]\n'
EMPTY_LOCK = (
    '{"_meta": {"hash": {"sha256": "0"}, "pipfile-spec": 6, "requires": {},'
    ' "sources": [{"name": "pypi", "url": "https://pypi.org/simple", "verify_ssl": true}]},'
    ' "default": {}, "develop": {}}\n'
)


def system_python(root: Path, ensurepip: bool = True) -> Path:
    """A Python installation in ``root`` that behaves like Debian's ``/usr/bin/python3``: not a
    virtualenv, and PEP 668's ``EXTERNALLY-MANAGED`` marker in its standard library folder, so pip
    refuses to install into it. (A virtualenv cannot stand in: pip ignores the marker inside one.)
    Built from the interpreter running the tests: its binary copied (so ``root`` is the prefix), the
    standard library linked entry by entry, pip unpacked from ensurepip's bundled wheel as its only
    package. ``ensurepip=False`` leaves ensurepip out, as Debian does without ``python3-venv``."""
    base = Path(sys.base_prefix)
    stdlib = Path(sysconfig.get_path("stdlib"))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(base / "bin" / version, root / "bin" / version)
    for name in ("python3", "python"):
        (root / "bin" / name).symlink_to(version)
    lib = root / stdlib.relative_to(base)
    lib.mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name not in ("site-packages", "EXTERNALLY-MANAGED") and (ensurepip or entry.name != "ensurepip"):
            (lib / entry.name).symlink_to(entry)
    for shared in (base / stdlib.relative_to(base).parent).glob("libpython*"):
        (lib.parent / shared.name).symlink_to(shared)
    (lib / "EXTERNALLY-MANAGED").write_text(
        "[externally-managed]\nError=This Python belongs to the system (the tests' stand-in for Debian's).\n"
    )
    (lib / "site-packages").mkdir()
    (wheel,) = (stdlib / "ensurepip" / "_bundled").glob("pip-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(lib / "site-packages")
    return root / "bin" / "python3"


def scratch_project(folder: Path) -> Path:
    for name in SETUP_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, folder / name)
    (folder / "Pipfile").write_text(EMPTY_PIPFILE)
    (folder / "Pipfile.lock").write_text(EMPTY_LOCK)
    return folder


def run_make(project: Path, python: Path, *targets: str) -> subprocess.CompletedProcess:
    """``make`` as on a machine whose ``python3`` is ``python`` (first on PATH, and the Makefile's PYTHON)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PIPENV_ACTIVE", "MAKEFLAGS", "PYTHON", "PIPENV_PYTHON")
    }
    env["PATH"] = f"{python.parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        ["make", "--no-print-directory", *targets, f"PYTHON={python}"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.programs
def test_setup_installs_pipenv_in_a_project_virtualenv_beside_an_externally_managed_python(tmp_path):
    python = system_python(tmp_path / "system")
    refused = subprocess.run(
        [python, "-m", "pip", "install", f"pipenv=={PIPENV_VERSION}"], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr, refused.stderr
    site_packages = next((tmp_path / "system").glob("lib/python*/site-packages"))
    before = listing(tmp_path / "system")

    project = scratch_project(tmp_path / "project")
    proc = run_make(project, python, "setup")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    bootstrap = project / "build" / "bootstrap-venv"
    version = subprocess.run(
        [bootstrap / "bin" / "python", "-m", "pipenv", "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.stdout.split()[-1] == PIPENV_VERSION, version.stdout + version.stderr
    assert f"home = {python.parent}" in (bootstrap / "pyvenv.cfg").read_text()
    assert (project / ".venv" / ".synced-runtime").is_file() and (project / ".venv" / "bin" / "python").exists()
    # The system Python is untouched: nothing installed, nothing written.
    assert listing(tmp_path / "system") == before
    assert not list(site_packages.glob("pipenv*"))

    again = run_make(project, python, "setup")
    assert again.returncode == 0 and "pip install" not in again.stdout, again.stdout + again.stderr


@pytest.mark.programs
def test_setup_names_the_debian_package_when_python_cannot_make_a_virtualenv(tmp_path):
    python = system_python(tmp_path / "system", ensurepip=False)
    project = scratch_project(tmp_path / "project")
    proc = run_make(project, python, "setup")
    assert proc.returncode != 0
    assert "python3-venv" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (project / "build" / "bootstrap-venv").exists() and not (project / ".venv").exists()


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """A filesystem mirror holding (a stand-in file for) the AWS provider."""
    root = tmp_path / "mirror"
    provider = root / "registry.terraform.io/hashicorp/aws/5.100.0/linux_amd64/terraform-provider-aws_v5.100.0_x5"
    provider.parent.mkdir(parents=True)
    provider.touch()
    return root


def test_cdktf_targets_skip_the_provider_lock_when_the_provider_comes_from_a_mirror(tmp_path, mirror):
    environ = {"ORTHWEB_TF_MIRROR": str(mirror), "TF_CLI_CONFIG_FILE": str(tmp_path / "missing.rc")}
    for command in sorted(SKIP_LOCK_COMMANDS):
        argv, env = cdktf_command(command, ["--output", "out"], environ, tmp_path / "cli")
        assert argv == ["npx", "cdktf", command, "--skip-provider-lock", "--output", "out"]
        assert env["TF_CLI_CONFIG_FILE"] == str(tmp_path / "cli" / "terraform.rc")
        assert f'path    = "{mirror}"' in Path(env["TF_CLI_CONFIG_FILE"]).read_text()
    # synth runs no Terraform and refuses the flag; a flag the user gave is not repeated.
    assert cdktf_command("synth", [], environ, tmp_path / "cli")[0] == ["npx", "cdktf", "synth"]
    argv, _ = cdktf_command("diff", ["--skip-provider-lock"], environ, tmp_path / "cli")
    assert argv.count("--skip-provider-lock") == 1
    # A CLI configuration the user points at stays theirs.
    own = tmp_path / "own.rc"
    own.write_text("")
    _, env = cdktf_command("deploy", [], {**environ, "TF_CLI_CONFIG_FILE": str(own)}, tmp_path / "cli")
    assert env["TF_CLI_CONFIG_FILE"] == str(own)


def test_cdktf_targets_leave_terraform_alone_without_a_mirror(tmp_path, no_mirror):
    environ = {"PATH": os.environ["PATH"]}
    for command in (*sorted(SKIP_LOCK_COMMANDS), "synth"):
        argv, env = cdktf_command(command, ["--auto-approve"], environ, tmp_path / "cli")
        assert argv == ["npx", "cdktf", command, "--auto-approve"] and env == environ
    assert not (tmp_path / "cli").exists()


def test_a_named_mirror_without_the_provider_is_an_error_not_a_fallback(tmp_path):
    environ = {"ORTHWEB_TF_MIRROR": str(tmp_path)}
    with pytest.raises(TerraformError, match="ORTHWEB_TF_MIRROR"):
        cdktf_command("diff", [], environ, tmp_path / "cli")
    assert terraform_cli_config(tmp_path / "cli", environ) is None


def test_the_makefile_runs_the_cdktf_targets_through_the_wrapper():
    proc = subprocess.run(
        ["make", "--no-print-directory", "-n", "diff", "deploy", "destroy", "output"],
        cwd=ROOT,
        env={**os.environ, "MAKEFLAGS": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("diff", "deploy", "destroy", "output"):
        assert f".venv/bin/python -m tools.ops.terraform cdktf {command}" in proc.stdout
    assert "npx cdktf diff" not in proc.stdout


def test_the_operator_category_pins_the_versions_the_tests_run_with():
    """[operator] in Pipfile.lock installs exactly the versions [dev-packages] (or [packages]) lock,
    so what an operator runs is what CI tested; a drift fails here."""
    lock = json.loads((ROOT / "Pipfile.lock").read_text())
    tested = {**lock["develop"], **lock["default"]}
    drift = {
        name: (spec["version"], tested.get(name, {}).get("version"))
        for name, spec in lock["operator"].items()
        if tested.get(name, {}).get("version") != spec["version"]
    }
    assert lock["operator"] and not drift, drift
