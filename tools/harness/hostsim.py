"""Run the host bootstrap off EC2: its /etc and /run folders in a work folder, the AWS API emulator
in place of AWS. Used by the bootstrap tests and the deploy rehearsal."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from tools.harness.emulator import Emulator
from tools.harness.localpg import PG_BIN


def bootstrap_env(etc: Path, run: Path, emulator: Emulator, extra_path: Sequence[Path] = ()) -> dict[str, str]:
    """Environment for ``orthweb-bootstrap``: Debian's awscli v2 first on PATH, psql, the emulator."""
    client = {k: v for k, v in emulator.client_env().items() if k != "AWS_ENDPOINT_URL"}  # awscli 2.9 ignores it
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
    script: Path, step: str, env: dict[str, str], log_file: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(script), step], env=env, capture_output=True, text=True, timeout=timeout)
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(proc.stdout + proc.stderr)
    return proc
