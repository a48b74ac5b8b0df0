"""A throwaway PostgreSQL cluster (the distribution's server: 15 on Debian 12, 17 on Debian 13) on
loopback that accepts TLS logins only, like RDS with ``rds.force_ssl=1``. Used by the bootstrap tests
and the local site harness."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tools.harness.pki import Certificate
from tools.proc import free_port, stop_process

PG_LIB = Path("/usr/lib/postgresql")


def find_pg_bin(lib: Path = PG_LIB) -> Path:
    """ORTHWEB_PG_BIN, else the newest server Debian installed under ``lib``/<major>/bin (15 on
    Debian 12, 17 on Debian 13); the Debian 12 folder when there is none (LocalPostgres says so)."""
    if configured := os.environ.get("ORTHWEB_PG_BIN"):
        return Path(configured)
    majors = [int(d.name) for d in lib.glob("*") if d.name.isdigit() and (d / "bin" / "postgres").exists()]
    return lib / str(max(majors, default=15)) / "bin"


PG_BIN = find_pg_bin()


class LocalPostgres:
    """``with LocalPostgres(server_cert, superuser, password, database) as pg:``; ``pg.port``."""

    def __init__(self, server_cert: Certificate, superuser: str, password: str, database: str):
        if not (PG_BIN / "postgres").exists():
            raise RuntimeError(f"no PostgreSQL server in {PG_BIN} (apt-get install postgresql, or set ORTHWEB_PG_BIN)")
        self.cert = server_cert
        self.superuser, self.password, self.database = superuser, password, database
        self.port = free_port()
        # Outside pytest's 0700 folders: the server runs as the postgres user, which must enter it.
        self.root = Path(tempfile.mkdtemp(prefix="orthweb-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.user = pwd.getpwnam("postgres")
        self.process: subprocess.Popen | None = None

    def _as_postgres(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(args),
            user=self.user.pw_uid,
            group=self.user.pw_gid,
            check=True,
            capture_output=True,
            text=True,
            **kwargs,
        )

    def start(self) -> LocalPostgres:
        os.chmod(self.root, 0o755)  # noqa: S103 - the postgres user must traverse it; it holds no secret yet
        shutil.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        shutil.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        self._as_postgres(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.superuser,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
        pwfile.unlink()
        for name, src in (("server.crt", self.cert.cert), ("server.key", self.cert.key)):
            shutil.copy(src, self.data / name)
            shutil.chown(self.data / name, self.user.pw_uid, self.user.pw_gid)
            os.chmod(self.data / name, 0o600)
        (self.data / "pg_hba.conf").write_text(
            "local all all scram-sha-256\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "hostssl all all ::1/128 scram-sha-256\n"
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\nssl = on\n"
                f"unix_socket_directories = '{self.root}'\nmax_connections = 200\n"
                "log_statement = 'none'\nlog_min_error_statement = 'panic'\n"
            )
        self._spawn()
        self.psql_superuser(f'CREATE DATABASE "{self.database}"', database="postgres")
        return self

    def _spawn(self) -> None:
        """Start the server as the postgres user directly (runuser would turn SIGTERM into SIGKILL)."""
        log = open(self.root / "postgres.log", "ab")
        self.process = subprocess.Popen(
            [str(PG_BIN / "postgres"), "-D", str(self.data)],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=self.user.pw_uid,
            group=self.user.pw_gid,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"postgres exited; see {self.root / 'postgres.log'}")
            ready = subprocess.run(
                [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
            )
            if ready.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("postgres did not become ready")

    def psql_superuser(self, sql: str, database: str | None = None) -> str:
        """Run SQL as the superuser over the local socket (for test setup and checks only)."""
        env = {**os.environ, "PGPASSWORD": self.password}
        args = [
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.root),
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-d",
            database or self.database,
            "-c",
            sql,
        ]
        proc = subprocess.run([str(PG_BIN / "psql"), *args], capture_output=True, text=True, env=env, check=True)
        return proc.stdout.strip()

    def renew(self, password: str) -> LocalPostgres:
        """The cluster as a new RDS instance leaves it: running, a new master password, an empty
        database and no role but the master's. Tests share one cluster this way instead of paying
        ~0.9 CPU-s for initdb and a start each; a test may have stopped it or changed any of these."""
        if self.process is None or self.process.poll() is not None:
            self._spawn()
        postgres = "postgres"
        others = self.psql_superuser(
            "select rolname from pg_roles where rolname <> current_user and rolname !~ '^pg_'", database=postgres
        )
        self.psql_superuser(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)', database=postgres)
        for role in others.split():
            self.psql_superuser(f'DROP ROLE "{role}"', database=postgres)
        self.psql_superuser(f'CREATE DATABASE "{self.database}"', database=postgres)
        self.psql_superuser(f"ALTER ROLE \"{self.superuser}\" PASSWORD '{password}'", database=postgres)
        self.password = password
        return self

    def restart(self) -> None:
        self.stop(remove=False)
        self._spawn()

    def stop(self, remove: bool = True) -> None:
        stop_process(self.process, timeout=20)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
