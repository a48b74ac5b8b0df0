"""``make db-tunnel``: the Session Manager port-forwarding command to the RDS endpoint and the psql
line; the psql line's verify-full through a tunnel proven with real psql against a TLS-only
PostgreSQL whose certificate names only the database's DNS name."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from config import ROOT
from config.facts import DB_NAME, PORT_FORWARDING_DOCUMENT, POSTGRES_PORT
from tools.ops.db_tunnel import psql_line, tunnel_command

OUTPUTS = {
    "hostinfo": {"value": "instance i-0abc1234def567890 (no SSH: a shell through Session Manager, see ...)"},
    "dbinfo": {"value": f"orthweb-db.c1a2b3c4d5e6.us-east-1.rds.amazonaws.com:{POSTGRES_PORT}"},
    "region": {"value": "us-east-1"},
}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools.ops.db_tunnel", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_forwards_through_the_host_to_the_rds_endpoint(tmp_path):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(OUTPUTS))
    shown = run("--outputs", str(outputs), "--print-only", "--local-port", "16543")
    assert shown.returncode == 0, shown.stderr
    command = tunnel_command({k: v["value"] for k, v in OUTPUTS.items()}, "i-0abc1234def567890", 16543)
    assert command[:5] == ["aws", "ssm", "start-session", "--target", "i-0abc1234def567890"]
    assert command[command.index("--document-name") + 1] == PORT_FORWARDING_DOCUMENT
    parameters = json.loads(command[-1])
    assert parameters == {
        "host": ["orthweb-db.c1a2b3c4d5e6.us-east-1.rds.amazonaws.com"],
        "portNumber": [str(POSTGRES_PORT)],
        "localPortNumber": ["16543"],
    }
    assert "sslmode=verify-full" in shown.stdout and "hostaddr=127.0.0.1 port=16543" in shown.stdout
    assert f"dbname={DB_NAME} user=orthweb_admin" in shown.stdout


@pytest.mark.parametrize(
    "args, named", [(["--local-port", "80"], "--local-port"), (["--outputs", "/nope"], "--outputs")]
)
def test_bad_arguments_exit_2_naming_the_option(args, named):
    refused = run(*args, "--print-only")
    assert refused.returncode == 2 and f"{named}:" in refused.stderr


def test_outputs_without_an_instance_exit_1(tmp_path):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({**OUTPUTS, "hostinfo": {"value": "nothing here"}}))
    failed = run("--outputs", str(outputs), "--print-only")
    assert failed.returncode == 1 and "hostinfo names no instance" in failed.stderr


@pytest.mark.programs
def test_the_psql_line_verifies_the_rds_name_through_the_tunnel(tmp_path):
    """verify-full against the database's DNS name while connecting to 127.0.0.1 (the tunnel's end):
    the line as printed works; the same without ``host`` (verify against 127.0.0.1) is refused."""
    from tools.harness.localpg import LocalPostgres
    from tools.harness.pki import make_ca, make_server_cert

    name = "orthweb-db.c1a2b3c4d5e6.us-east-1.rds.amazonaws.com"
    ca = make_ca(tmp_path / "pki", "Stand-in RDS CA")
    cert = make_server_cert(tmp_path / "pki", ca, "db", sans=f"DNS:{name}")
    with LocalPostgres(cert, "orthweb_admin", "tunnel-test-password", DB_NAME) as pg:
        line = psql_line({"dbinfo": f"{name}:{POSTGRES_PORT}"}, pg.port).replace(
            str(ROOT / "config" / "rds-ca-bundle.pem"), str(ca.cert)
        )
        conninfo = line.removeprefix('psql "').removesuffix('"')
        env = {**os.environ, "PGPASSFILE": str(tmp_path / "pgpass")}
        (tmp_path / "pgpass").write_text("*:*:*:*:tunnel-test-password\n")
        (tmp_path / "pgpass").chmod(0o600)
        ok = subprocess.run(["psql", conninfo, "-Atc", "select 1"], capture_output=True, text=True, env=env, timeout=30)
        assert ok.returncode == 0 and ok.stdout.strip() == "1", ok.stderr
        by_address = conninfo.replace(f"host={name} ", "host=127.0.0.1 ")
        refused = subprocess.run(
            ["psql", by_address, "-Atc", "select 1"], capture_output=True, text=True, env=env, timeout=30
        )
        assert refused.returncode != 0 and "does not match host name" in refused.stderr
