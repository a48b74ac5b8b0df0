"""A private tunnel to the study index: Session Manager port forwarding through a host to RDS.

    python -m tools.ops.db_tunnel [--local-port 15432] [--outputs FILE] [--print-only]   (make db-tunnel)

The database accepts connections only from the hosts' security group, and there is no SSH: the
tunnel runs through the SSM agent of a host (``AWS-StartPortForwardingSessionToRemoteHost``) to the
RDS endpoint, and listens on 127.0.0.1 only. It needs the AWS CLI v2 with the session-manager
plugin, and your AWS credentials. It prints the psql line first: ``hostaddr`` sends the
connection into the tunnel while ``host`` stays the RDS name, so ``sslmode=verify-full`` checks the
certificate against the name RDS signed it for, with the RDS CA bundle the hosts use. psql asks for
the password (the master user's is in the secret ``db_secret_arn`` names; the app role's, field
``db_password``, in ``admin_secret``); nothing here reads or prints it.
Exit codes: 0 (the session ended), 1 site or tool problem, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from config import ROOT
from config.facts import APP_DB_USER, DB_MASTER_USER, DB_NAME, PORT_FORWARDING_DOCUMENT
from tools.ops.site import NoOutputs, SiteUnreadable, client, site_outputs

DEFAULT_LOCAL_PORT = 15432
RDS_CA = ROOT / "config" / "rds-ca-bundle.pem"


def a_host(outputs: dict[str, Any], endpoint_url: str | None = None) -> str:
    """The instance to tunnel through: the single host, or a healthy host of the group."""
    if outputs.get("host_group"):
        groups = client("autoscaling", outputs["region"], endpoint_url).describe_auto_scaling_groups(
            AutoScalingGroupNames=[outputs["host_group"]]
        )["AutoScalingGroups"]
        healthy = [
            i["InstanceId"]
            for g in groups
            for i in g["Instances"]
            if i["LifecycleState"] == "InService" and i["HealthStatus"] == "Healthy"
        ]
        if not healthy:
            raise SiteUnreadable(f"no healthy host in {outputs['host_group']} to tunnel through")
        return healthy[0]
    found = re.search(r"\b(i-[0-9a-f]{8,17})\b", outputs.get("hostinfo", ""))
    if not found:
        raise SiteUnreadable(f"hostinfo names no instance: {outputs.get('hostinfo')!r}")
    return found.group(1)


def tunnel_command(outputs: dict[str, Any], instance: str, local_port: int) -> list[str]:
    db_host, _, db_port = outputs["dbinfo"].rpartition(":")
    parameters = {"host": [db_host], "portNumber": [db_port], "localPortNumber": [str(local_port)]}
    return [
        "aws", "ssm", "start-session", "--target", instance, "--region", outputs["region"],
        "--document-name", PORT_FORWARDING_DOCUMENT, "--parameters", json.dumps(parameters, separators=(",", ":")),
    ]  # fmt: skip


def psql_line(outputs: dict[str, Any], local_port: int, user: str = DB_MASTER_USER) -> str:
    db_host = outputs["dbinfo"].rpartition(":")[0]
    return (
        f'psql "host={db_host} hostaddr=127.0.0.1 port={local_port} dbname={DB_NAME} user={user}'
        f' sslmode=verify-full sslrootcert={RDS_CA}"'
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.ops.db_tunnel", description=__doc__.split("\n")[0])
    p.add_argument("--local-port", type=int, default=DEFAULT_LOCAL_PORT, help="port on 127.0.0.1 (1024-65535)")
    p.add_argument("--outputs", type=Path, help="JSON of `terraform output -json` (default: the deployed stack)")
    p.add_argument("--print-only", action="store_true", help="print the commands, do not start the session")
    p.add_argument("--endpoint-url", default=None, help=argparse.SUPPRESS)  # the AWS API emulator in tests
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not 1024 <= a.local_port <= 65535:
        p.error(f"--local-port: {a.local_port!r} is not allowed; allowed: a whole number from 1024 to 65535")
    if a.outputs is not None and not a.outputs.is_file():
        p.error(f"--outputs: {a.outputs} is not a readable file")
    try:
        outputs = site_outputs(a.outputs)
        command = tunnel_command(outputs, a_host(outputs, a.endpoint_url), a.local_port)
    except SiteUnreadable as exc:
        print(f"db-tunnel: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, NoOutputs) else 1
    print("In another terminal, once the session below says it is waiting for connections:")
    print(f"  {psql_line(outputs, a.local_port)}")
    print(f"  (or user={APP_DB_USER}, the role Orthanc uses; psql asks for the password)")
    print("Tunnel: " + " ".join(command[:-1]) + f" '{command[-1]}'")
    if a.print_only:
        return 0
    missing = [tool for tool in ("aws", "session-manager-plugin") if not shutil.which(tool)]
    if missing:
        print(
            f"db-tunnel: {' and '.join(missing)} not found: install the AWS CLI v2 and the Session Manager plugin"
            " (https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html)",
            file=sys.stderr,
        )
        return 1
    sys.stdout.flush()
    os.execvp(command[0], command)  # noqa: S606 - the AWS CLI, arguments hold no secret


if __name__ == "__main__":
    sys.exit(main())
