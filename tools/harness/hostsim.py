"""Run the host's program off EC2: its /etc and /run folders in a work folder, the AWS API emulator
in place of AWS. Used by the bootstrap tests, the local site and the deploy rehearsal."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from config import ROOT
from tools.harness.emulator import Emulator
from tools.harness.localpg import PG_BIN
from userdata import HOST_LIB, AppValues, bundle_files

PROGRAM = "usr/local/sbin/orthweb-bootstrap"


def install_host_program(root: Path) -> Path:
    """The host's program as the boot bundle installs it (/usr/local/sbin/orthweb-bootstrap and the
    orthweb_host package) under ``root``; returns the program's path."""
    for path, (mode, text) in bundle_files(AppValues()).items():
        if path == PROGRAM or path.startswith(HOST_LIB + "/"):
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            target.chmod(mode)
    return root / PROGRAM


def host_program() -> Path:
    """The current host program, installed once per content under build/host-program (read-only use)."""
    files = {p: t for p, (_, t) in bundle_files(AppValues()).items() if p == PROGRAM or p.startswith(HOST_LIB + "/")}
    key = hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()[:16]
    root = ROOT / "build" / "host-program" / key
    if not (root / PROGRAM).exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=root.parent))
        install_host_program(partial)
        try:
            os.rename(partial, root)
        except OSError:  # another worker installed the same content first
            shutil.rmtree(partial, ignore_errors=True)
    return root / PROGRAM


def bootstrap_env(etc: Path, run: Path, emulator: Emulator, extra_path: Sequence[Path] = ()) -> dict[str, str]:
    """Environment for ``orthweb-bootstrap``: the emulator's endpoint and placeholder keys, psql on PATH."""
    client = {k: v for k, v in emulator.client_env().items() if k != "AWS_ENDPOINT_URL"}
    path = ":".join([*map(str, extra_path), "/usr/bin", "/bin", str(PG_BIN)])
    return {
        "PATH": path,
        "HOME": str(etc.parent),
        "ORTHWEB_ETC": str(etc),
        "ORTHWEB_RUN": str(run),
        "ORTHWEB_AWS_ENDPOINT": emulator.endpoint,
        "RDS_CA_CONTAINER_PATH": str(etc / "rds-ca.pem"),
        **client,
    }


def run_bootstrap(
    program: Path, step: str, env: dict[str, str], log_file: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(program), step], env=env, capture_output=True, text=True, timeout=timeout)
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(proc.stdout + proc.stderr)
    return proc
