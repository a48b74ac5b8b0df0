"""Local site harness: the whole application path of an Orthweb host on one machine, on free
loopback ports, from the same rendered templates and bootstrap as on EC2.

- PostgreSQL 15 accepting TLS logins only (like RDS with ``rds.force_ssl``), superuser = the
  "RDS master" whose credentials sit in the emulator's RDS-style secret;
- the AWS API emulator holding the DICOM bucket and the secrets;
- ``userdata/bootstrap.sh secrets`` run against the emulator exactly as on the host (app secrets,
  site certificate for localhost/127.0.0.1, the ``orthanc`` database role, runtime secret files);
- Orthanc (Debian 1.10 + PostgreSQL index plugin) with the rendered ``orthanc.json``, the runtime
  secret files merged in as the orthancteam image does with Docker secrets, and a Python-plugin
  storage area as the STAND-IN for the official S3 plugin (tools/s3_storage_plugin.py);
- nginx with the stream module and the rendered ``nginx.conf``: HTTPS and DICOM TLS in front.

``python -m tools.harness.localsite up|down`` (``make local-up`` / ``make local-down``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from config import ROOT
from config.facts import (
    ADMIN_SECRET,
    CA_SECRET,
    CLIENT_CA_SECRET,
    CLIENTS_SECRET,
    DB_MASTER_USER,
    DB_NAME,
    DEFAULT_AE_TITLE,
    ORTHANC_ADMIN_USER,
    TLS_SECRET,
)
from config.inputs import DicomModality
from tools.harness.emulator import Emulator
from tools.harness.hostsim import bootstrap_env, run_bootstrap
from tools.harness.localpg import LocalPostgres
from tools.harness.pki import make_ca, make_server_cert
from tools.proc import free_ports, stop_pid, stop_process, wait_for_port
from userdata import HostValues, site_env
from userdata.site import NginxValues, OrthancValues, client_files, render_nginx, render_orthanc

BOOTSTRAP = ROOT / "userdata" / "bootstrap.sh"
PLUGIN = Path(__file__).resolve().parent / "s3_storage_plugin.py"
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
STATE_FILE = Path(os.environ.get("ORTHWEB_LOCALSITE_DIR", ROOT / "build" / "localsite")) / "site.json"
PORT_NAMES = ("orthanc_http", "orthanc_dicom", "https", "dicom_tls")


def local_nginx(prefix: Path, **values: Any) -> NginxValues:
    """NginxValues for Debian's nginx running as this user under ``prefix`` (stream module loaded,
    no user switch, IP upstreams so no resolver, the http2 form that nginx version understands)."""
    version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", version)
    modern = bool(found) and tuple(int(x) for x in found.groups()) >= (1, 25, 1)  # type: ignore[union-attr]
    defaults: dict[str, Any] = {
        "pid_path": str(prefix / "nginx.pid"),
        "error_log": str(prefix / "error.log"),
        "access_log": str(prefix / "access.log"),
        "temp_dir": str(prefix / "temp"),
        "user": "",
        "resolver": "",
        "http2_directive": modern,
        "load_modules": (str(NGINX_STREAM_MODULE),),
    }
    return NginxValues(**{**defaults, **values})


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


class SiteNotUp(RuntimeError):
    """A listener the site announces did not answer as itself; the message names it."""


@dataclass
class LocalSite:
    workdir: Path
    ae_title: str = DEFAULT_AE_TITLE
    bucket: str = "orthweb-dicom-local"
    region: str = "us-east-1"
    name: str = "orthweb"
    # "certificate": nginx asks DICOM clients for a certificate from the site's client CA.
    dicom_client_auth: str = "none"
    modalities: tuple[DicomModality, ...] = ()
    # Ports by name (PORT_NAMES); any not given are handed out by tools.proc.free_ports.
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    # -- paths ---------------------------------------------------------------------------------
    @property
    def etc(self) -> Path:
        return self.workdir / "etc"

    @property
    def run(self) -> Path:
        return self.workdir / "run"

    @property
    def ca_path(self) -> Path:
        return self.run / "site-ca.pem"

    def admin(self) -> dict[str, str]:
        return json.loads(self.sm.get_secret_value(SecretId=self.arns["admin"])["SecretString"])

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> LocalSite:
        """Start every part, then check that each announced listener answers as itself."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        missing = [name for name in PORT_NAMES if name not in self.ports]
        self.ports = {**dict(zip(missing, free_ports(len(missing)), strict=True)), **self.ports}
        self.emulator = Emulator(self.workdir / "logs", region=self.region).start()
        self.sm = boto3.client("secretsmanager", **self.emulator.boto_kwargs())
        self.s3 = boto3.client("s3", **self.emulator.boto_kwargs())
        self.s3.create_bucket(Bucket=self.bucket)
        master_pw = os.urandom(16).hex()
        # What Terraform creates on AWS: the empty secrets, Orthanc's role.
        self.arns = {
            label: self.sm.create_secret(Name=f"{self.name}/{suffix}")["ARN"]
            for label, suffix in (
                ("admin", ADMIN_SECRET),
                ("tls", TLS_SECRET),
                ("ca", CA_SECRET),
                ("client_ca", CLIENT_CA_SECRET),
                ("clients", CLIENTS_SECRET),
            )
        }
        self.arns["db"] = self.sm.create_secret(
            Name="rds!db-local", SecretString=json.dumps({"username": DB_MASTER_USER, "password": master_pw})
        )["ARN"]
        iam = boto3.client("iam", **self.emulator.boto_kwargs())
        self.orthanc_role_arn = iam.create_role(
            RoleName=f"{self.name}-orthanc",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
        )["Role"]["Arn"]
        rds_ca = make_ca(self.workdir / "rds-pki", "Local RDS CA")
        self.pg = LocalPostgres(
            make_server_cert(self.workdir / "rds-pki", rds_ca, "db"), DB_MASTER_USER, master_pw, DB_NAME
        ).start()
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "rds-ca.pem").write_text(rds_ca.cert.read_text())
        self.bootstrap()
        self.start_orthanc()
        self.start_nginx()
        self.verify()
        return self

    def host_values(self) -> HostValues:
        return HostValues(
            region=self.region,
            bucket=self.bucket,
            admin_secret_arn=self.arns["admin"],
            tls_secret_arn=self.arns["tls"],
            ca_secret_arn=self.arns["ca"],
            clients_secret_arn=self.arns["clients"],
            db_secret_arn=self.arns["db"],
            db_host="localhost",
            db_port=str(self.pg.port),
            db_name=DB_NAME,
            site_dns="localhost",
            site_ip="127.0.0.1",
            log_group="",
            orthanc_role_arn=self.orthanc_role_arn,
            config_bucket="",
            dicom_client_auth=self.dicom_client_auth,
        )

    def bootstrap(self) -> str:
        """The host bootstrap, as on EC2 (secrets step), against the emulator."""
        (self.etc / "site.env").write_text(site_env(self.host_values()))
        proc = run_bootstrap(
            BOOTSTRAP,
            "secrets",
            bootstrap_env(self.etc, self.run, self.emulator),
            log_file=self.workdir / "logs" / "bootstrap.log",
        )
        if proc.returncode != 0:
            raise RuntimeError(f"bootstrap failed:\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    def refresh(self) -> str:
        """What ``orthweb-bootstrap refresh`` does on the host, with native processes instead of
        compose: re-read the secrets, restart Orthanc if its credentials changed, reload nginx if
        its files changed (or Orthanc was restarted)."""
        log = self.bootstrap()
        changed = (self.run / "last-changed").read_text()
        if "db-connection-uri" in changed or "registered-users" in changed:
            self.restart_orthanc()
            changed += " nginx-upstream"
        if any(name in changed for name in ("site-cert", "site-key", "client-ca", "client-crl", "nginx-upstream")):
            self.reload_nginx()
        return log

    def reload_nginx(self, timeout: float = 20) -> None:
        """``nginx -s reload``, then wait until the old workers have gone: the signal returns at once,
        and a connection made before the new workers run would still meet the old configuration."""
        prefix = self.workdir / "nginx"
        master = self.processes["nginx"].pid
        before = _children(master)
        subprocess.run(["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-s", "reload"], check=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = _children(master)
            if now and not now & before:
                return
            time.sleep(0.05)
        raise SiteNotUp(f"nginx did not finish reloading within {timeout}s")

    def orthanc_config(self) -> dict[str, Any]:
        """The rendered orthanc.json, with the runtime secret files merged in (as the orthancteam
        image does with Docker secrets) and local paths and ports."""
        config = json.loads(
            render_orthanc(
                OrthancValues(
                    ae_title=self.ae_title,
                    bucket=self.bucket,
                    region=self.region,
                    modalities=self.modalities,
                    dicom_port=self.ports["orthanc_dicom"],
                    http_port=self.ports["orthanc_http"],
                    storage_directory=str(self.workdir / "orthanc-db"),
                )
            )
        )
        secrets = self.run / "secrets"
        config["PostgreSQL"]["ConnectionUri"] = (secrets / "db-connection-uri").read_text()
        config["RegisteredUsers"] = json.loads((secrets / "registered-users").read_text())
        config["AwsS3Storage"].update({"Endpoint": self.emulator.endpoint, "VirtualAddressing": False})
        config["Plugins"] = [
            str(ORTHANC_PLUGINS / "libOrthancPostgreSQLIndex.so"),
            str(ORTHANC_PLUGINS / "libOrthancPython.so"),
        ]
        config["Python"] = {"Path": str(PLUGIN)}
        config["PythonScript"] = str(PLUGIN)
        config["IndexDirectory"] = str(self.workdir / "orthanc-db")
        return config

    def start_orthanc(self) -> None:
        (self.workdir / "orthanc-db").mkdir(exist_ok=True)
        path = self.run / "orthanc.json"
        path.write_text(json.dumps(self.orthanc_config(), indent=1))
        os.chmod(path, 0o600)
        # As in the container: no credentials in the environment, only the file the bootstrap renews.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            TCP_NODELAY="1",
            AWS_SHARED_CREDENTIALS_FILE=str(self.run / "aws" / "credentials"),
            AWS_EC2_METADATA_DISABLED="true",
        )
        log = open(self.workdir / "logs" / "orthanc.log", "ab")
        self.processes["orthanc"] = subprocess.Popen(
            ["Orthanc", str(path)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        self._listening("orthanc", ("orthanc_http", "orthanc_dicom"))

    def start_nginx(self) -> None:
        prefix = self.workdir / "nginx"
        (prefix / "temp").mkdir(parents=True, exist_ok=True)
        files = self.run / "nginx"
        client_ca, client_crl = client_files(str(files), self.dicom_client_auth == "certificate")
        conf = render_nginx(
            local_nginx(
                prefix,
                http_upstream=f"127.0.0.1:{self.ports['orthanc_http']}",
                dicom_upstream=f"127.0.0.1:{self.ports['orthanc_dicom']}",
                https_listen=f"127.0.0.1:{self.ports['https']}",
                dicom_listen=f"127.0.0.1:{self.ports['dicom_tls']}",
                cert_path=str(files / "site-cert.pem"),
                key_path=str(files / "site-key.pem"),
                client_ca_path=client_ca,
                client_crl_path=client_crl,
            )
        )
        (prefix / "nginx.conf").write_text(conf)
        log = open(self.workdir / "logs" / "nginx.log", "ab")
        self.processes["nginx"] = subprocess.Popen(
            [
                "nginx",
                "-p",
                str(prefix),
                "-c",
                str(prefix / "nginx.conf"),
                "-e",
                str(prefix / "error.log"),
                "-g",
                "daemon off;",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self._listening("nginx", ("https", "dicom_tls"))

    def _listening(self, name: str, port_names: tuple[str, ...]) -> None:
        for port_name in port_names:
            port = self.ports[port_name]
            try:
                wait_for_port(port, process=self.processes[name])
            except RuntimeError as exc:
                raise SiteNotUp(f"{name} ({port_name} 127.0.0.1:{port}): {exc}; see {self.workdir / 'logs'}") from exc

    # -- is it up? ------------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Each listener the site announces answers as itself: both processes run, the HTTPS port
        completes a TLS handshake with the site certificate and REST answers with the site's AE
        title, the DICOM TLS port completes a handshake and a C-ECHO. Raises SiteNotUp naming the
        first that does not; returns one line per listener."""
        https, dicom = self.ports["https"], self.ports["dicom_tls"]
        checks: list[tuple[str, Callable[[], str]]] = [
            ("Orthanc process", lambda: self._running("orthanc")),
            ("nginx process", lambda: self._running("nginx")),
            (f"web/REST https://127.0.0.1:{https}", self._check_rest),
            (f"DICOM TLS 127.0.0.1:{dicom}", self._check_dicom),
        ]
        lines = []
        for label, check in checks:
            try:
                lines.append(f"{label}: {check()}")
            except Exception as exc:  # noqa: BLE001 - any failure means "not up", named
                raise SiteNotUp(f"{label}: {exc or exc.__class__.__name__}") from exc
        return lines

    def _running(self, name: str) -> str:
        proc = self.processes.get(name)
        if proc is None or proc.poll() is not None:
            raise RuntimeError(
                f"not running (exit code {None if proc is None else proc.returncode}); see {self.workdir / 'logs'}"
            )
        return f"running, pid {proc.pid}"

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_path))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def _handshake(self, port: int) -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with self.tls_context().wrap_socket(raw, server_hostname="localhost") as tls:
                return tls.version() or "?"

    def _check_rest(self) -> str:
        version = self._handshake(self.ports["https"])
        status, body = self.rest("/system", auth=(ORTHANC_ADMIN_USER, self.admin()["password"]))
        if status != 200:
            raise RuntimeError(f"REST /system answered {status}")
        aet = json.loads(body).get("DicomAet")
        if aet != self.ae_title:
            raise RuntimeError(f"answered as AE title {aet!r}, not {self.ae_title!r}")
        return f"{version}, REST answers as {aet}"

    def _check_dicom(self) -> str:
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        if self.dicom_client_auth == "certificate":
            return self._check_asks_for_client_certificate()
        version = self._handshake(self.ports["dicom_tls"])
        ae = AE(ae_title="ORTHWEBUP")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 10
        assoc = ae.associate(
            "127.0.0.1", self.ports["dicom_tls"], ae_title=self.ae_title, tls_args=(self.tls_context(), "localhost")
        )
        if not assoc.is_established:
            raise RuntimeError("DICOM association refused")
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status or status.Status != 0:
            raise RuntimeError(f"C-ECHO status {getattr(status, 'Status', None)}")
        return f"{version}, C-ECHO to {self.ae_title}"

    def _check_asks_for_client_certificate(self) -> str:
        """With client certificates required, a client without one is turned away after the
        server has shown the site certificate."""
        with socket.create_connection(("127.0.0.1", self.ports["dicom_tls"]), timeout=10) as raw:
            with self.tls_context().wrap_socket(raw, server_hostname="localhost") as tls:
                version = tls.version()
                try:
                    tls.sendall(b"\x01")
                    answered = tls.recv(1)
                except (ssl.SSLError, ConnectionError):
                    answered = b""
        if answered:
            raise RuntimeError("answered a client without a certificate")
        return f"{version}, refuses a client without a certificate"

    # -- faults and lifecycle ------------------------------------------------------------------
    def kill_orthanc(self) -> None:
        """kill -9: no chance to flush or say goodbye."""
        proc = self.processes.pop("orthanc")
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def restart_orthanc(self) -> None:
        self.stop_process("orthanc")
        self.start_orthanc()

    def stop_process(self, name: str) -> None:
        stop_process(self.processes.pop(name, None))

    def stop(self) -> None:
        for name in ("nginx", "orthanc"):
            self.stop_process(name)
        if getattr(self, "pg", None):
            self.pg.stop()
        if getattr(self, "emulator", None):
            self.emulator.stop()

    def rest(
        self,
        path: str,
        *,
        auth: tuple[str, str] | None = None,
        direct: bool = False,
        method: str = "GET",
        data: bytes | None = None,
    ) -> tuple[int, bytes]:
        """One REST call through the TLS front door (or straight to Orthanc with ``direct``)."""
        if direct:
            url, context = f"http://127.0.0.1:{self.ports['orthanc_http']}{path}", None
        else:
            url, context = f"https://127.0.0.1:{self.ports['https']}{path}", self.tls_context()
        request = urllib.request.Request(url, method=method, data=data)  # noqa: S310 - loopback only
        if auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
        try:
            with urllib.request.urlopen(request, context=context, timeout=60) as response:  # noqa: S310
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def describe(self) -> dict[str, Any]:
        return {
            "https": f"https://127.0.0.1:{self.ports['https']}/",
            "dicom_host": "127.0.0.1",
            "dicom_port": self.ports["dicom_tls"],
            "ae_title": self.ae_title,
            "ca": str(self.ca_path),
            "user": ORTHANC_ADMIN_USER,
            "password_secret": f"{self.name}/{ADMIN_SECRET} (in the emulator)",
            "workdir": str(self.workdir),
        }


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "up"
    if command == "up":
        workdir = STATE_FILE.parent
        shutil.rmtree(workdir, ignore_errors=True)
        site = LocalSite(workdir)
        try:
            site.start()
        except SiteNotUp as exc:
            print(f"Orthweb local site is NOT up: {exc}", file=sys.stderr)
            site.stop()
            return 1
        info = site.describe()
        password_file = workdir / "admin-password"
        password_file.write_text(site.admin()["password"])
        password_file.chmod(0o600)
        info["password_file"] = str(password_file)
        info["pids"] = {name: p.pid for name, p in site.processes.items()}
        for name, process in (("emulator", site.emulator.process), ("postgres", site.pg.process)):
            if process is not None:
                info["pids"][name] = process.pid
        info["pg_root"] = str(site.pg.root)
        STATE_FILE.write_text(json.dumps(info, indent=1))
        print(
            f"Orthweb local site is up (stand-in S3 plugin; see README)\n"
            f"  web/REST : {info['https']}  user admin, password in {info['password_file']}\n"
            f"  DICOM TLS: {info['dicom_host']}:{info['dicom_port']}  AE title {info['ae_title']}\n"
            f"  site CA  : {info['ca']}\n  stop with: make local-down"
        )
        # Leave the servers running: detach from them.
        os._exit(0)
    if command == "down":
        if not STATE_FILE.exists():
            print("no local site is running")
            return 0
        info = json.loads(STATE_FILE.read_text())
        # Front to back; PostgreSQL gets SIGINT ("fast" shutdown: it does not wait for clients).
        order = ("nginx", "orthanc", "postgres", "emulator")
        for name in sorted(info["pids"], key=lambda n: order.index(n) if n in order else len(order)):
            stop_pid(info["pids"][name], signal.SIGINT if name == "postgres" else signal.SIGTERM)
        shutil.rmtree(info.get("pg_root", ""), ignore_errors=True)
        STATE_FILE.unlink()
        print("local site stopped")
        return 0
    print("usage: python -m tools.harness.localsite up|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
