"""Local site harness: the whole application path of an Orthweb site on one machine, on free
loopback ports, from the same rendered templates and bootstrap as on EC2.

- PostgreSQL 15 accepting TLS logins only (like RDS with ``rds.force_ssl``), superuser = the
  "RDS master" whose credentials sit in the emulator's RDS-style secret;
- the AWS API emulator holding the DICOM bucket and the secrets;
- per host, ``orthweb-bootstrap secrets`` (the host's program) run against the emulator as on the host (app
  secrets, site certificate for localhost/127.0.0.1, the ``orthanc`` database role, runtime secret
  files) in the host's own /etc and /run folders;
- per host, Orthanc (Debian 1.10 + PostgreSQL index plugin) with the rendered ``orthanc.json``, the
  runtime secret files merged in as the orthancteam image does with Docker secrets, and a
  Python-plugin storage area as the STAND-IN for the official S3 plugin (tools/s3_storage_plugin.py)
  (or, with ``storage="disk"``, Orthanc's own local-disk storage: the benchmark's fast path);
- per host, nginx with the stream module and the rendered ``nginx.conf``: HTTPS and DICOM TLS in front;
- with ``hosts`` > 1 (the scaled profile), one site (database, bucket, secrets) with N hosts, each
  with ``several_servers`` and its own ``server_identifier``, and in front of their nginx a real TCP
  load balancer, HAProxy in ``mode tcp``: TLS passes through to the hosts, and active HTTPS health
  checks of each host's ``/orthanc-health`` take a host out as the AWS NLB's target health does.

``python -m tools.harness.localsite up [--hosts N]|down`` (``make local-up [HOSTS=N]`` / ``make local-down``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import boto3

from config import ROOT
from config.facts import (
    ADMIN_SECRET,
    CA_CERT_SECRET,
    CA_SECRET,
    CLIENT_CA_SECRET,
    CLIENTS_SECRET,
    DB_MASTER_USER,
    DB_NAME,
    DEFAULT_AE_TITLE,
    ORTHANC_ADMIN_USER,
    TLS_SECRET,
    USERS_SECRET,
)
from config.inputs import DicomModality
from tools.harness.emulator import Emulator
from tools.harness.hostsim import bootstrap_env, host_program, run_bootstrap
from tools.harness.localpg import LocalPostgres
from tools.harness.pki import make_ca, make_server_cert
from tools.ops.orthanc_http import OrthancHttp, tls_context
from tools.ops.site import LOCAL_SITE_STATE
from tools.proc import free_ports, stop_pid, stop_process, wait_for_port
from userdata import HostValues, site_env
from userdata.site import (
    ORTHANC_DICOM_TLS,
    NginxValues,
    OrthancValues,
    client_files,
    render_nginx,
    render_orthanc,
)

PLUGIN = Path(__file__).resolve().parent / "s3_storage_plugin.py"
LOCAL_UI = Path(__file__).resolve().parent / "local_ui.py"
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
STATE_FILE = LOCAL_SITE_STATE
PORT_NAMES = ("orthanc_http", "orthanc_dicom", "https", "dicom_tls")
STORAGE_KINDS = ("s3", "disk")
# What every host ends the bootstrap with that must be the same on all of them: one admin secret
# (users and database password), one site CA, one server certificate and key.
SHARED_RUNTIME_FILES = (
    "secrets/registered-users",
    "secrets/user-roles",
    "secrets/db-connection-uri",
    "nginx/site-cert.pem",
    "nginx/site-key.pem",
    "nginx/site-names.map",
    "nginx/users.map",
    "site-ca.pem",
)
# The balancer's backends, named after the NLB's target groups (one per listener).
BALANCED = ("https", "dicom_tls")
# Health checks: every second, out after 2 failures, back after 2 passes (the NLB checks every 10
# or 30 s with thresholds of 2-10; faster here so tests and benchmarks need not wait long).
CHECK_TIMING = "inter 1s fall 2 rise 2"


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


def native_orthanc_config(
    config: dict[str, Any],
    secrets: Path,
    *,
    http_port: int,
    dicom_port: int,
    storage_dir: Path,
    s3_endpoint: str | None,
    modality_ca: Path | None = None,
    roles_script: Path = ROOT / "docker" / "orthweb_roles.py",
) -> dict[str, Any]:
    """A host's orthanc.json made ready for Debian's Orthanc running natively: the runtime secret
    files merged in (as the orthancteam image does with Docker secrets), local ports and folders,
    Debian's plugins, and the S3 STAND-IN plugin pointed at ``s3_endpoint`` (None: Orthanc's own
    local-disk storage, the benchmark's fast path)."""
    config = {**config, "HttpPort": http_port, "DicomPort": dicom_port}
    config["StorageDirectory"] = config["IndexDirectory"] = str(storage_dir)
    config["PostgreSQL"] = {**config["PostgreSQL"], "ConnectionUri": (secrets / "db-connection-uri").read_text()}
    config["RegisteredUsers"] = json.loads((secrets / "registered-users").read_text())
    config["OrthwebRoles"] = json.loads((secrets / "user-roles").read_text())
    # Orthanc's DICOM TLS identity where the host wrote it, the modalities' CA where it lies.
    for key in ("DicomTlsCertificate", "DicomTlsPrivateKey"):
        if key in config:
            config[key] = config[key].replace(ORTHANC_DICOM_TLS, str(secrets.parent / "dicom-tls"))
    if "DicomTlsTrustedCertificates" in config:
        if modality_ca is None:
            raise ValueError("a modality has tls: the local Orthanc needs the modalities' CA file")
        config["DicomTlsTrustedCertificates"] = str(modality_ca)
    # The index in PostgreSQL and DICOMweb (Debian's plugin 1.7; the image has 1.24), as on a host.
    # The Python plugin runs the roles script, as in the image; with the S3 STAND-IN (a Python plugin
    # script too, and Orthanc's Python plugin runs one), the stand-in runs it after itself.
    plugins = ("libOrthancPostgreSQLIndex.so", "libOrthancDicomWeb.so", "libOrthancPython.so")
    config["Plugins"] = [str(ORTHANC_PLUGINS / p) for p in plugins]
    config["PythonScript"] = str(roles_script)
    if s3_endpoint:
        config["AwsS3Storage"] = {**config["AwsS3Storage"], "Endpoint": s3_endpoint, "VirtualAddressing": False}
        config["PythonScript"] = str(PLUGIN)
        # The roles script, then the STAND-IN start page (tools/harness/local_ui.py).
        config["OrthwebLocalScripts"] = [str(roles_script), str(LOCAL_UI)]
    else:
        del config["AwsS3Storage"]
    return config


def native_nginx_conf(prefix: Path, ports: dict[str, int], files: Path, client_certificates: bool) -> str:
    """A host's nginx.conf for Debian's nginx running natively under ``prefix``: the front door on
    the ``https`` and ``dicom_tls`` loopback ports, Orthanc on its own two, the certificate files
    (and, with ``client_certificates``, the client CA and CRL) in ``files``."""
    client_ca, client_crl = client_files(str(files), client_certificates)
    return render_nginx(
        local_nginx(
            prefix,
            http_upstream=f"127.0.0.1:{ports['orthanc_http']}",
            dicom_upstream=f"127.0.0.1:{ports['orthanc_dicom']}",
            https_listen=f"127.0.0.1:{ports['https']}",
            dicom_listen=f"127.0.0.1:{ports['dicom_tls']}",
            cert_path=str(files / "site-cert.pem"),
            key_path=str(files / "site-key.pem"),
            site_names_path=str(files / "site-names.map"),
            credentials_path=str(files / "users.map"),
            client_ca_path=client_ca,
            client_crl_path=client_crl,
        )
    )


def render_haproxy(
    listen: dict[str, int], hosts: Sequence[dict[str, int]], admin_socket: Path, check_timing: str = CHECK_TIMING
) -> str:
    """HAProxy as the site's NLB: one TCP frontend per listener (HTTPS, DICOM TLS) passing TLS
    through to every host's nginx, and per host an active HTTPS check of ``GET /orthanc-health``
    (200 only while that host's Orthanc answers), for the DICOM target too, as the NLB's target
    group health check would be configured (HTTPS, path /orthanc-health, the HTTPS port)."""
    lines = [
        "global",
        "    maxconn 4096",
        # State changes (a host going DOWN or UP) in the log; no per-connection lines.
        "    log stderr format short local0 notice",
        f"    stats socket {admin_socket} mode 600 level admin",
        "defaults",
        "    mode tcp",
        "    log global",
        "    timeout connect 10s",
        # Long associations (a whole study over one connection) must not be cut: as nginx's proxy_timeout.
        "    timeout client 900s",
        "    timeout server 900s",
        "    timeout check 5s",
        # A connection refused by a host (its nginx gone) is tried on another one.
        "    retries 2",
        "    option redispatch",
    ]
    for name in BALANCED:
        lines += [
            f"frontend {name}",
            f"    bind 127.0.0.1:{listen[name]}",
            f"    default_backend {name}",
            f"backend {name}",
            # DICOM associations are long and uneven: the least busy host; HTTPS round robin.
            f"    balance {'leastconn' if name == 'dicom_tls' else 'roundrobin'}",
            "    option httpchk GET /orthanc-health",
            "    http-check expect status 200",
            # A host marked down has its open connections closed, as the NLB resets them.
            "    default-server on-marked-down shutdown-sessions",
        ]
        lines += [
            f"    server host-{i} 127.0.0.1:{ports[name]} check port {ports['https']} check-ssl verify none"
            f" {check_timing}"
            for i, ports in enumerate(hosts)
        ]
    return "\n".join(lines) + "\n"


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "(missing)"


class SiteNotUp(RuntimeError):
    """A listener the site announces did not answer as itself; the message names it."""


@dataclass
class LocalHost:
    """One EC2 host of the site: its own disk (/etc/orthweb, /run/orthweb, nginx's prefix, Orthanc's
    scratch folder, logs), its own ports, its own Orthanc and nginx processes."""

    index: int
    root: Path
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"host-{self.index}"

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def nginx_prefix(self) -> Path:
        return self.root / "nginx"

    @property
    def orthanc_dir(self) -> Path:
        return self.root / "orthanc-db"

    def process(self, kind: str) -> str:
        """Name of this host's ``orthanc`` or ``nginx`` in LocalSite.processes (host 0 keeps the plain names)."""
        return kind if self.index == 0 else f"{kind}-{self.index}"


# The site's secrets by label (the stack's aws_secretsmanager_secret.<label>_secret) and name suffix.
SECRET_LABELS = {
    "admin": ADMIN_SECRET,
    "tls": TLS_SECRET,
    "ca": CA_SECRET,
    "ca_cert": CA_CERT_SECRET,
    "users": USERS_SECRET,
    "client_ca": CLIENT_CA_SECRET,
    "clients": CLIENTS_SECRET,
}


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
    # PEM of the CA of the modalities with tls (modality_ca_file's text).
    modality_ca: str = ""
    # Hosts on the one site (database, bucket, secrets). With more than one, a TCP load balancer
    # (HAProxy) fronts them and ``ports["https"]``/``ports["dicom_tls"]`` are the balancer's.
    hosts: int = 1
    # "s3": the S3 plugin STAND-IN writing to the emulator's bucket (as the host, to S3);
    # "disk": Orthanc's own local-disk storage (the benchmark's fast path; not what a host runs).
    storage: str = "s3"
    # Ports by name (PORT_NAMES); any not given are handed out by tools.proc.free_ports. With
    # hosts > 1, "https" and "dicom_tls" are the balancer's, "orthanc_*" host 0's Orthanc.
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hosts < 1:
            raise ValueError(f"hosts must be 1 or more, not {self.hosts}")
        if self.storage not in STORAGE_KINDS:
            raise ValueError(f"storage must be one of {STORAGE_KINDS}, not {self.storage!r}")
        # One host keeps today's layout (its folders straight in workdir); several get one folder each.
        self.local_hosts = [
            LocalHost(i, self.workdir if self.hosts == 1 else self.workdir / f"host-{i}") for i in range(self.hosts)
        ]
        self.balancer_dir: Path | None = None
        self.first_boot_disagreements: list[str] = []

    # -- paths ---------------------------------------------------------------------------------
    def host(self, index: int = 0) -> LocalHost:
        return self.local_hosts[index]

    @property
    def host_ports(self) -> list[dict[str, int]]:
        """Each host's own ports: its Orthanc (orthanc_http, orthanc_dicom) and its nginx front door
        (https, dicom_tls), reachable directly, past the balancer."""
        return [h.ports for h in self.local_hosts]

    @property
    def etc(self) -> Path:
        return self.host(0).etc

    @property
    def run(self) -> Path:
        return self.host(0).run

    @property
    def ca_path(self) -> Path:
        """The site CA (the same on every host, which start() checks)."""
        return self.run / "site-ca.pem"

    def admin(self) -> dict[str, str]:
        return json.loads(self.sm.get_secret_value(SecretId=self.arns["admin"])["SecretString"])

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> LocalSite:
        """Start every part, then check that each announced listener answers as itself."""
        self.provision()
        self.boot_hosts()
        for index in range(self.hosts):
            # One after the other: the first creates the index schema (the plugin takes an advisory
            # lock for that), the next find it ready.
            self.start_orthanc(index)
            self.start_nginx(index)
        if self.hosts > 1:
            self.start_balancer()
        self.verify()
        return self

    def _allocate_ports(self) -> None:
        missing = [name for name in PORT_NAMES if name not in self.ports]
        self.ports = {**dict(zip(missing, free_ports(len(missing)), strict=True)), **self.ports}
        if self.hosts == 1:
            self.host(0).ports = self.ports
            return
        extra = iter(free_ports(2 + 4 * (self.hosts - 1)))
        self.host(0).ports = {
            "orthanc_http": self.ports["orthanc_http"],
            "orthanc_dicom": self.ports["orthanc_dicom"],
            "https": next(extra),
            "dicom_tls": next(extra),
        }
        for h in self.local_hosts[1:]:
            h.ports = {name: next(extra) for name in PORT_NAMES}

    def provision(self) -> LocalSite:
        """What Terraform and RDS provide before any host boots: ports, the emulator with the bucket,
        the empty secrets and Orthanc's role, and the TLS-only database."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._allocate_ports()
        self.emulator = Emulator(self.workdir / "logs", region=self.region).start()
        self.sm = boto3.client("secretsmanager", **self.emulator.boto_kwargs())
        self.s3 = boto3.client("s3", **self.emulator.boto_kwargs())
        self.s3.create_bucket(Bucket=self.bucket)
        self.s3_prefix_list, self.s3_prefix_list_arn = self.emulator.s3_prefix_list()
        master_pw = os.urandom(16).hex()
        # What Terraform creates on AWS: the empty secrets, Orthanc's role.
        self.arns = {
            label: self.sm.create_secret(Name=f"{self.name}/{suffix}")["ARN"] for label, suffix in SECRET_LABELS.items()
        }
        self.arns["db"] = self.sm.create_secret(
            Name="rds!db-local", SecretString=json.dumps({"username": DB_MASTER_USER, "password": master_pw})
        )["ARN"]
        iam = boto3.client("iam", **self.emulator.boto_kwargs())
        self.orthanc_role_arn = iam.create_role(
            RoleName=f"{self.name}-orthanc",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
        )["Role"]["Arn"]
        self.rds_ca = make_ca(self.workdir / "rds-pki", "Local RDS CA")
        self.pg = LocalPostgres(
            make_server_cert(self.workdir / "rds-pki", self.rds_ca, "db"), DB_MASTER_USER, master_pw, DB_NAME
        ).start()
        return self

    def under_stack_roles(self, stack_json: dict[str, Any], *, config_bucket: str, session: str) -> dict[str, str]:
        """Hold the site to the stack's IAM: the host and Orthanc roles get the policies and trusts
        of the synthesized stack (``stack_json``, same ``name``; tools/harness/stack_roles.py fills
        in this site's ARNs), then the emulator enforces identity policies. Returns the credentials
        of a host role session (what EC2 hands the instance); this site's own clients become the
        operator's (an IAM user allowed everything), as Terraform and an operator are on AWS."""
        from tools.harness.stack_roles import derived_values, role_documents

        iam = boto3.client("iam", **self.emulator.boto_kwargs())
        account = boto3.client("sts", **self.emulator.boto_kwargs()).get_caller_identity()["Account"]
        host_arn = f"arn:aws:iam::{account}:role/{self.name}-host"
        values = {
            **derived_values(stack_json, partition="aws", region=self.region, account=account),
            **{f"aws_secretsmanager_secret.{label}_secret.arn": self.arns[label] for label in SECRET_LABELS},
            "aws_db_instance.database.master_user_secret[0].secret_arn": self.arns["db"],
            "aws_s3_bucket.config_bucket.arn": f"arn:aws:s3:::{config_bucket}",
            "aws_s3_bucket.dicom_bucket.arn": f"arn:aws:s3:::{self.bucket}",
            "aws_iam_role.access_host-role.arn": host_arn,
            "aws_iam_role.access_orthanc-role.arn": self.orthanc_role_arn,
            "data.aws_ec2_managed_prefix_list.network_s3-ranges.arn": self.s3_prefix_list_arn,
        }
        host = role_documents(stack_json, f"{self.name}-host", values)
        orthanc = role_documents(stack_json, f"{self.name}-orthanc", values)
        iam.create_role(RoleName=host.name, AssumeRolePolicyDocument=host.trust)
        iam.update_assume_role_policy(RoleName=orthanc.name, PolicyDocument=orthanc.trust)
        for role in (host, orthanc):
            for policy, document in role.policies.items():
                iam.put_role_policy(RoleName=role.name, PolicyName=policy, PolicyDocument=document)
        credentials = self.emulator.assume_role(host_arn, session)
        self.emulator.operator()
        self.sm = boto3.client("secretsmanager", **self.emulator.boto_kwargs())
        self.s3 = boto3.client("s3", **self.emulator.boto_kwargs())
        self.emulator.enforce_iam(True)
        return credentials

    def host_values(self) -> HostValues:
        return HostValues(
            region=self.region,
            bucket=self.bucket,
            admin_secret_arn=self.arns["admin"],
            tls_secret_arn=self.arns["tls"],
            ca_secret_arn=self.arns["ca"],
            ca_cert_secret_arn=self.arns["ca_cert"],
            users_secret_arn=self.arns["users"],
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
            # The database is on loopback; S3's ranges are the emulator's prefix list's.
            vpc_cidr="127.0.0.0/8",
            s3_prefix_list=self.s3_prefix_list,
        )

    def bootstrap(self, host: int = 0, *, program: Path | None = None, aws_endpoint: str = "") -> str:
        """The host's program, as on EC2 (secrets step), against the emulator, in the host's own
        /etc and /run. ``program`` (another copy of it) and ``aws_endpoint`` (a proxy in front of the
        emulator, tools/harness/awsproxy.py) serve tests that race bootstraps on purpose."""
        h = self.host(host)
        h.etc.mkdir(parents=True, exist_ok=True)
        (h.etc / "rds-ca.pem").write_text(self.rds_ca.cert.read_text())
        (h.etc / "modality-ca.pem").write_text(self.modality_ca)
        (h.etc / "site.env").write_text(site_env(self.host_values()))
        env = bootstrap_env(h.etc, h.run, self.emulator)
        if aws_endpoint:
            env["ORTHWEB_AWS_ENDPOINT"] = aws_endpoint
        # The RDS CA as Orthanc sees it: one path on every host, like the container's /etc/orthweb/rds-ca.pem.
        env["RDS_CA_CONTAINER_PATH"] = str(self.rds_ca.cert)
        proc = run_bootstrap(program or host_program(), "secrets", env, log_file=h.logs / "bootstrap.log")
        if proc.returncode != 0:
            raise RuntimeError(f"bootstrap of {h.name} failed:\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    def bootstrap_hosts(self, *, program: Path | None = None, aws_endpoints: Sequence[str] = ()) -> list[str]:
        """Every host's bootstrap at the same time, as hosts launched together boot. Raises naming
        the first host whose bootstrap failed; returns the logs. Whether the hosts agree is
        ``runtime_disagreements()``."""
        logs: list[str | BaseException] = [RuntimeError("did not run")] * self.hosts

        def boot(index: int) -> None:
            try:
                endpoint = aws_endpoints[index] if aws_endpoints else ""
                logs[index] = self.bootstrap(index, program=program, aws_endpoint=endpoint)
            except BaseException as exc:  # noqa: BLE001 - reported below, naming the host
                logs[index] = exc

        threads = [threading.Thread(target=boot, args=(i,)) for i in range(self.hosts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for result in logs:
            if isinstance(result, BaseException):
                raise result
        return [str(log) for log in logs]

    def boot_hosts(self) -> None:
        """The bootstraps at the same time; then, if the hosts disagree on a shared file, each host's
        next refresh (what orthweb-refresh.timer runs within 5 minutes on EC2) and a hard check.
        The create-once secrets (admin, site CA) use a fixed request token and always agree; the
        server certificate's token is derived from a secret version read after the decision, so
        two hosts can each store one (tests/test_e2e_scaled.py reproduces it; noted in
        ``first_boot_disagreements`` and logs/bootstrap-race.log)."""
        self.bootstrap_hosts()
        self.first_boot_disagreements = self.runtime_disagreements()
        if self.first_boot_disagreements:
            note = f"first concurrent bootstraps disagreed on {', '.join(self.first_boot_disagreements)}; refreshed\n"
            (self.workdir / "logs" / "bootstrap-race.log").write_text(note)
            self.bootstrap_hosts()
        disagreeing = self.runtime_disagreements()
        if disagreeing:
            raise SiteNotUp(f"the hosts' bootstraps disagree on {', '.join(disagreeing)}")

    def runtime_disagreements(self) -> list[str]:
        """The shared runtime files (secrets, certificate) whose content differs between hosts;
        compared by digest, never shown."""
        return [
            name
            for name in SHARED_RUNTIME_FILES
            if len({_digest(h.run / name) for h in self.local_hosts}) != 1 or not (self.host(0).run / name).exists()
        ]

    def refresh(self, host: int = 0) -> str:
        """What ``orthweb-bootstrap refresh`` does on the host, with native processes instead of
        compose: re-read the secrets, restart Orthanc if its credentials changed, reload nginx if
        its files changed (or Orthanc was restarted)."""
        log = self.bootstrap(host)
        changed = (self.host(host).run / "last-changed").read_text()
        if any(name in changed for name in ("db-connection-uri", "registered-users", "user-roles")):
            self.restart_orthanc(host)
            changed += " nginx-upstream"
        if any(name in changed for name in ("site-cert", "site-key", "client-ca", "client-crl", "nginx-upstream")):
            self.reload_nginx(host)
        return log

    def reload_nginx(self, host: int = 0, timeout: float = 20) -> None:
        """``nginx -s reload``, then wait until the old workers have gone: the signal returns at once,
        and a connection made before the new workers run would still meet the old configuration."""
        h = self.host(host)
        prefix = h.nginx_prefix
        master = self.processes[h.process("nginx")].pid
        before = _children(master)
        subprocess.run(["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-s", "reload"], check=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = _children(master)
            if now and not now & before:
                return
            time.sleep(0.05)
        raise SiteNotUp(f"nginx of {h.name} did not finish reloading within {timeout}s")

    def orthanc_config(self, host: int = 0) -> dict[str, Any]:
        """The rendered orthanc.json, with the runtime secret files merged in (as the orthancteam
        image does with Docker secrets) and local paths and ports."""
        h = self.host(host)
        config = json.loads(
            render_orthanc(
                OrthancValues(
                    ae_title=self.ae_title,
                    bucket=self.bucket,
                    region=self.region,
                    modalities=self.modalities,
                    several_servers=self.hosts > 1,
                    server_identifier=h.name if self.hosts > 1 else "",
                )
            )
        )
        return native_orthanc_config(
            config,
            h.run / "secrets",
            http_port=h.ports["orthanc_http"],
            dicom_port=h.ports["orthanc_dicom"],
            storage_dir=h.orthanc_dir,
            s3_endpoint=self.emulator.endpoint if self.storage == "s3" else None,
            modality_ca=h.etc / "modality-ca.pem",  # as the bundle installs it (bootstrap writes it here)
        )

    def start_orthanc(self, host: int = 0) -> None:
        h = self.host(host)
        h.orthanc_dir.mkdir(parents=True, exist_ok=True)
        h.logs.mkdir(parents=True, exist_ok=True)
        path = h.run / "orthanc.json"
        path.write_text(json.dumps(self.orthanc_config(host), indent=1))
        os.chmod(path, 0o600)
        # As in the container: no credentials in the environment, only the file the bootstrap renews.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            TCP_NODELAY="1",
            AWS_SHARED_CREDENTIALS_FILE=str(h.run / "aws" / "credentials"),
            AWS_EC2_METADATA_DISABLED="true",
        )
        log = open(h.logs / "orthanc.log", "ab")
        self.processes[h.process("orthanc")] = subprocess.Popen(
            ["Orthanc", str(path)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        self._listening(h.process("orthanc"), [(name, h.ports[name]) for name in ("orthanc_http", "orthanc_dicom")])

    def start_nginx(self, host: int = 0) -> None:
        h = self.host(host)
        prefix = h.nginx_prefix
        (prefix / "temp").mkdir(parents=True, exist_ok=True)
        h.logs.mkdir(parents=True, exist_ok=True)
        conf = native_nginx_conf(prefix, h.ports, h.run / "nginx", self.dicom_client_auth == "certificate")
        (prefix / "nginx.conf").write_text(conf)
        log = open(h.logs / "nginx.log", "ab")
        self.processes[h.process("nginx")] = subprocess.Popen(
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
        self._listening(h.process("nginx"), [(name, h.ports[name]) for name in ("https", "dicom_tls")])

    def start_balancer(self) -> None:
        """HAProxy in front of every host's nginx, on the site's https and dicom_tls ports."""
        if not shutil.which("haproxy"):
            raise SiteNotUp("haproxy not found: the scaled local site needs it (apt-get install haproxy)")
        # A short folder for the admin socket: a unix socket path may not exceed 107 bytes.
        self.balancer_dir = Path(tempfile.mkdtemp(prefix="orthweb-lb-", dir="/tmp"))
        config = self.balancer_dir / "haproxy.cfg"
        config.write_text(render_haproxy(self.ports, self.host_ports, self.balancer_dir / "admin.sock"))
        checked = subprocess.run(["haproxy", "-c", "-q", "-f", str(config)], capture_output=True, text=True)
        if checked.returncode != 0:
            raise SiteNotUp(f"balancer configuration refused: {checked.stdout}{checked.stderr}")
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "logs" / "haproxy.log", "ab")
        # -db: stay in the foreground, one process we own and stop.
        self.processes["haproxy"] = subprocess.Popen(
            ["haproxy", "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        self._listening("haproxy", [(name, self.ports[name]) for name in BALANCED])

    def _listening(self, name: str, ports: list[tuple[str, int]]) -> None:
        for port_name, port in ports:
            try:
                wait_for_port(port, process=self.processes[name])
            except RuntimeError as exc:
                raise SiteNotUp(f"{name} ({port_name} 127.0.0.1:{port}): {exc}; see {self.workdir / 'logs'}") from exc

    # -- the balancer ---------------------------------------------------------------------------
    def balancer(self, command: str) -> str:
        """One command on HAProxy's admin socket (``show stat``, ``disable server dicom_tls/host-1``)."""
        if self.balancer_dir is None:
            raise RuntimeError("this site has no balancer (hosts=1)")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.balancer_dir / "admin.sock"))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def balancer_servers(self) -> dict[tuple[str, str], dict[str, str]]:
        """(backend, host name) -> HAProxy's statistics row: ``status`` (UP, DOWN, MAINT), ``check_status``
        (L7OK, L7STS, L4CON, ...), ``stot`` (connections it was given), ``scur`` (open now)."""
        text = self.balancer("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {(row["pxname"], row["svname"]): row for row in rows if row["svname"] not in ("FRONTEND", "BACKEND", "")}

    def host_state(self, host: int) -> set[str]:
        """The balancer's view of one host, in both backends: {"UP"} once its last health check
        passed in each (HAProxy starts servers UP before their first check; the NLB's targets only
        count once they passed), {"DOWN"} out of rotation, {"MAINT"} taken out by hand, or mixed."""
        name = self.host(host).name
        states = set()
        for (_, server), row in self.balancer_servers().items():
            if server != name:
                continue
            status, check = row["status"].split()[0], row["check_status"].lstrip("* ")
            states.add(f"UP ({check})" if status == "UP" and check != "L7OK" else status)
        return states

    def wait_host_state(self, host: int, state: str, timeout: float = 60) -> None:
        """Until the balancer sees ``host`` as ``state`` (UP, DOWN, MAINT) in every backend."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.host_state(host) == {state}:
                return
            time.sleep(0.2)
        raise SiteNotUp(f"the balancer sees {self.host(host).name} as {self.host_state(host)}, not {state}")

    def set_in_balancer(self, host: int, enabled: bool) -> None:
        """Take a host out of (maintenance) or back into the balancer's rotation, in every backend."""
        for backend in BALANCED:
            self.balancer(f"{'enable' if enabled else 'disable'} server {backend}/{self.host(host).name}")

    # -- is it up? ------------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Each listener the site announces answers as itself: every process runs, every HTTPS port
        (each host's, and the balancer's) completes a TLS handshake with the site certificate and
        REST answers with the site's AE title, every DICOM TLS port completes a handshake and a
        C-ECHO, and the balancer's health checks see every host UP. Raises SiteNotUp naming the
        first that does not; returns one line per listener."""
        checks: list[tuple[str, Callable[[], str]]] = []
        several = self.hosts > 1
        for h in self.local_hosts:
            prefix = f"{h.name} " if several else ""
            https, dicom = h.ports["https"], h.ports["dicom_tls"]
            checks += [
                (f"{prefix}Orthanc process", partial(self._running, h.process("orthanc"))),
                (f"{prefix}nginx process", partial(self._running, h.process("nginx"))),
                (f"{prefix}web/REST https://127.0.0.1:{https}", partial(self.check_rest, https)),
                (f"{prefix}DICOM TLS 127.0.0.1:{dicom}", partial(self.check_dicom, dicom)),
            ]
        if several:
            https, dicom = self.ports["https"], self.ports["dicom_tls"]
            checks += [
                ("balancer (HAProxy) process", partial(self._running, "haproxy")),
                ("balancer health checks", self._check_balanced),
                (f"balancer web/REST https://127.0.0.1:{https}", partial(self.check_rest, https)),
                (f"balancer DICOM TLS 127.0.0.1:{dicom}", partial(self.check_dicom, dicom)),
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

    def _check_balanced(self) -> str:
        for index in range(self.hosts):
            self.wait_host_state(index, "UP")
        return f"{', '.join(h.name for h in self.local_hosts)} UP in {' and '.join(BALANCED)}"

    def tls_context(self) -> ssl.SSLContext:
        return tls_context(self.ca_path)

    def _handshake(self, port: int) -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with self.tls_context().wrap_socket(raw, server_hostname="localhost") as tls:
                return tls.version() or "?"

    def check_rest(self, port: int) -> str:
        version = self._handshake(port)
        front = OrthancHttp(f"https://127.0.0.1:{port}", context=self.tls_context())
        answer = front.request("/system", auth=(ORTHANC_ADMIN_USER, self.admin()["password"]))
        status, body = answer.status, answer.body
        if status != 200:
            raise RuntimeError(f"REST /system answered {status}")
        aet = json.loads(body).get("DicomAet")
        if aet != self.ae_title:
            raise RuntimeError(f"answered as AE title {aet!r}, not {self.ae_title!r}")
        return f"{version}, REST answers as {aet}"

    def check_dicom(self, port: int) -> str:
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        if self.dicom_client_auth == "certificate":
            return self._check_asks_for_client_certificate(port)
        version = self._handshake(port)
        ae = AE(ae_title="ORTHWEBUP")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 10
        assoc = ae.associate("127.0.0.1", port, ae_title=self.ae_title, tls_args=(self.tls_context(), "localhost"))
        if not assoc.is_established:
            raise RuntimeError("DICOM association refused")
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status or status.Status != 0:
            raise RuntimeError(f"C-ECHO status {getattr(status, 'Status', None)}")
        return f"{version}, C-ECHO to {self.ae_title}"

    def _check_asks_for_client_certificate(self, port: int) -> str:
        """With client certificates required, a client without one is turned away after the
        server has shown the site certificate."""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
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
    def kill_orthanc(self, host: int = 0) -> None:
        """kill -9: no chance to flush or say goodbye."""
        proc = self.processes.pop(self.host(host).process("orthanc"))
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def restart_orthanc(self, host: int = 0) -> None:
        self.stop_process(self.host(host).process("orthanc"))
        self.start_orthanc(host)

    def stop_process(self, name: str) -> None:
        stop_process(self.processes.pop(name, None))

    def stop(self) -> None:
        # Front to back: the balancer, then each host's nginx and Orthanc.
        self.stop_process("haproxy")
        for h in self.local_hosts:
            for kind in ("nginx", "orthanc"):
                self.stop_process(h.process(kind))
        if getattr(self, "pg", None):
            self.pg.stop()
        if getattr(self, "emulator", None):
            self.emulator.stop()
        if self.balancer_dir:
            shutil.rmtree(self.balancer_dir, ignore_errors=True)

    def rest(
        self,
        path: str,
        *,
        auth: tuple[str, str] | None = None,
        direct: bool = False,
        method: str = "GET",
        data: bytes | None = None,
        host: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """One REST call through the site's TLS front door (the balancer when there are several
        hosts), through one host's own front door (``host``), or straight to a host's Orthanc
        (``direct``; host 0 unless ``host`` says otherwise)."""
        if direct:
            client = OrthancHttp(f"http://127.0.0.1:{self.host(host or 0).ports['orthanc_http']}")
        else:
            port = self.ports["https"] if host is None else self.host(host).ports["https"]
            client = OrthancHttp(f"https://127.0.0.1:{port}", context=self.tls_context())
        answer = client.request(path, method=method, data=data, headers=headers, auth=auth, anonymous=auth is None)
        return answer.status, answer.body

    def outputs(self) -> dict[str, dict[str, Any]]:
        """The local site in the form of ``terraform output -json`` of a deployed stack: what
        ``make validate SITE=local`` reads, through the same code path as against AWS."""
        values = {
            "hostinfo": f"local site in {self.workdir} ({self.hosts} host(s))",
            "site_url": f"https://127.0.0.1:{self.ports['https']}",
            "dicom_endpoint": f"127.0.0.1:{self.ports['dicom_tls']}",
            "bucket_name": self.bucket,
            "region": self.region,
            "ae_title": self.ae_title,
            "admin_secret": self.arns["admin"],
            "ca_secret": self.arns["ca_cert"],
        }
        return {name: {"sensitive": False, "type": "string", "value": value} for name, value in values.items()}

    def record(self, state_file: Path) -> dict[str, Any]:
        """Write what the operator commands read of a running local site (``make validate SITE=local``,
        ``make user SITE=local``...: ``--local``) into ``state_file`` and beside it: the outputs, like
        a deployed stack's, the emulator, the site's name and region, the admin password file, and
        what ``make local-down`` stops. Returns what it wrote."""
        workdir = state_file.parent
        info = self.describe()
        password_file = workdir / "admin-password"
        password_file.write_text(self.admin()["password"])
        password_file.chmod(0o600)
        info["password_file"] = str(password_file)
        info["pids"] = {name: p.pid for name, p in self.processes.items()}
        for name, process in (("emulator", self.emulator.process), ("postgres", self.pg.process)):
            if process is not None:
                info["pids"][name] = process.pid
        info["pg_root"] = str(self.pg.root)
        info["balancer_dir"] = str(self.balancer_dir or "")
        outputs_file = workdir / "outputs.json"
        outputs_file.write_text(json.dumps(self.outputs(), indent=1))
        info["outputs_file"], info["emulator"] = str(outputs_file), self.emulator.endpoint
        info["name"], info["region"] = self.name, self.region
        state_file.write_text(json.dumps(info, indent=1))
        return info

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "https": f"https://127.0.0.1:{self.ports['https']}/",
            "dicom_host": "127.0.0.1",
            "dicom_port": self.ports["dicom_tls"],
            "ae_title": self.ae_title,
            "ca": str(self.ca_path),
            "user": ORTHANC_ADMIN_USER,
            "password_secret": f"{self.name}/{ADMIN_SECRET} (in the emulator)",
            "workdir": str(self.workdir),
        }
        if self.hosts > 1:
            info["hosts"] = {
                h.name: {"https": f"https://127.0.0.1:{h.ports['https']}/", "dicom_port": h.ports["dicom_tls"]}
                for h in self.local_hosts
            }
        return info


# Stopped in this order by `down`: front to back; PostgreSQL gets SIGINT ("fast" shutdown).
DOWN_ORDER = ("haproxy", "nginx", "orthanc", "postgres", "emulator")


def _down_rank(name: str) -> int:
    kind = name.split("-", 1)[0]
    return DOWN_ORDER.index(kind) if kind in DOWN_ORDER else len(DOWN_ORDER)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.harness.localsite")
    parser.add_argument("command", nargs="?", default="up", choices=("up", "down"))
    parser.add_argument("--hosts", type=int, default=1, help="hosts behind a local TCP load balancer (default 1)")
    args = parser.parse_args(argv[1:])
    if args.command == "up":
        workdir = STATE_FILE.parent
        shutil.rmtree(workdir, ignore_errors=True)
        try:
            site = LocalSite(workdir, hosts=args.hosts)
        except ValueError as exc:
            print(f"Orthweb local site: {exc}", file=sys.stderr)
            return 2
        try:
            site.start()
        except SiteNotUp as exc:
            print(f"Orthweb local site is NOT up: {exc}", file=sys.stderr)
            site.stop()
            return 1
        info = site.record(STATE_FILE)
        print(
            f"Orthweb local site is up (stand-in S3 plugin; see docs/deploy.md)\n"
            f"  web/REST : {info['https']}  user admin, password in {info['password_file']}\n"
            f"  DICOM TLS: {info['dicom_host']}:{info['dicom_port']}  AE title {info['ae_title']}\n"
            f"  site CA  : {info['ca']}\n  stop with: make local-down"
        )
        if site.hosts > 1:
            print(
                f"  {site.hosts} hosts behind a TCP load balancer (HAProxy); each host's own front door: "
                + ", ".join(f"{name} {h['https']} DICOM {h['dicom_port']}" for name, h in info["hosts"].items())
            )
        if site.first_boot_disagreements:
            print(
                "note: the hosts' first concurrent bootstraps disagreed on "
                f"{', '.join(site.first_boot_disagreements)} (a known race in the bootstrap); a refresh converged them",
                file=sys.stderr,
            )
        # Leave the servers running: detach from them.
        os._exit(0)
    if not STATE_FILE.exists():
        print("no local site is running")
        return 0
    info = json.loads(STATE_FILE.read_text())
    for name in sorted(info["pids"], key=_down_rank):
        stop_pid(info["pids"][name], signal.SIGINT if name == "postgres" else signal.SIGTERM)
    for folder in (info.get("pg_root", ""), info.get("balancer_dir", "")):
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    STATE_FILE.unlink()
    print("local site stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
