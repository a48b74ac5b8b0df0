"""orthweb-bootstrap: bring an Orthweb host up, idempotently (safe to run any number of times).

    orthweb-bootstrap boot      every boot (orthweb-boot.service retries it with backoff): Elastic IP,
                                packages, Docker + compose, RDS CA, CloudWatch agent, then starts
                                orthweb.service (whose start runs ``secrets``) and the refresh timer
    orthweb-bootstrap secrets   create-once secrets and certificates, database role, Orthanc's
                                credentials, runtime files (orthweb.service runs it before compose)
    orthweb-bootstrap refresh   ``secrets`` (certificate renewed when due), then recreate or reload what
                                changed (orthweb-refresh.timer, every 5 minutes)
    orthweb-bootstrap egress    the containers' egress rules (egress.py; orthweb.service runs it
                                before compose: no container starts without them)

Deploy-time values come from /etc/orthweb/site.env (no secret in it). Secret values are never
printed, passed as command arguments or put in environment variables: they live in Secrets
Manager and, on the host, in this process and in root-only files on tmpfs (/run/orthweb). The
few temporary files a run needs (psql's password file) live in one folder under /run/orthweb that
is removed on every exit path. ``secrets`` and ``refresh`` take /run/orthweb/lock, one run at a
time; ``boot`` takes no lock: it starts orthweb.service, whose own ``secrets`` takes it.
"""

from __future__ import annotations

import base64
import datetime
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .aws import Aws, AwsError, Imds, SecretsManager, SecretValue, assume_role, credentials_from, prefix_list_cidrs
from .egress import Egress, EgressError, apply

# docker compose v2 plugin, pinned by release and SHA-256 (value as pinned and verified by the
# Docker Official Image build of docker:28, docker-library/docker 28/cli/Dockerfile).
COMPOSE_VERSION = "v2.38.2"
COMPOSE_SHA256 = "486b3ffc0f806ca2efbc430cef89955386011662f0c76bad17c103d059cfa9cf"
COMPOSE_URL = f"https://github.com/docker/compose/releases/download/{COMPOSE_VERSION}/docker-compose-linux-x86_64"
COMPOSE_PLUGIN = Path("/usr/local/lib/docker/cli-plugins/docker-compose")
# The first value of a create-once secret is stored with a fixed request token: when hosts boot
# together, one write wins and the others get ResourceExistsException and read the winner's value.
FIRST_VALUE_TOKEN = "orthweb-first-value-0000000000000001"  # noqa: S105 - a request token, not a secret
CA_DAYS = 1826  # the site CA: 5 years; the refresh warns in its last 180 days
SERVER_DAYS = 825  # the longest lifetime macOS and iOS accept for a TLS server certificate
WARN_DAYS = 180  # CA and CRL expiry warnings
CREDENTIAL_SECONDS = 3600  # Orthanc's role credentials; renewed at every run (every 5 minutes)
BOOT_STEPS = ("network", "packages", "compose", "rds_ca", "monitoring", "services")
# The roles of named users (config/facts.py USER_ROLES; the host's program cannot import config).
USER_ROLES = ("viewer", "uploader", "researcher", "admin")
# What the host needs from dnf: Docker, psql for the database role, cryptography for the certificates.
PACKAGES = ("docker", "postgresql15", "python3-cryptography")
NO_CLIENT_CA = "Orthweb: no DICOM client certificate issued yet"
USAGE = "usage: orthweb-bootstrap [boot|secrets|refresh|egress]"
STEPS = ("boot", "secrets", "refresh", "egress")
_SITE_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)='([^'\n\\]*)'$")


class BootError(Exception):
    """The run cannot go on; the message says why (logged as ERROR, exit 1)."""


# Under systemd (LogsDirectory=orthweb in the units) the log also goes to a file the CloudWatch
# agent ships to /<name>/host, where errors and warnings raise alarms.
LOG_FILE = "host.log"
_log_to: list[Path] = []


def log(message: str) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = f"{stamp} orthweb-bootstrap: {message}"
    print(line, flush=True)
    for path in _log_to:
        try:
            with open(path, "a") as out:
                out.write(line + "\n")
        except OSError:
            pass  # the journal has it


def short(arn: str) -> str:
    """A secret's name as logs show it (the ARN's last path part)."""
    return arn.rsplit("/", 1)[-1]


# -- settings ---------------------------------------------------------------------------------------


def read_site_env(path: Path) -> dict[str, str]:
    """site.env as cloud-init wrote it: KEY='value' lines (userdata.site_env); later lines win."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        found = _SITE_LINE.match(line)
        if not found:
            raise BootError(f"{path}: cannot read the line {line.split('=', 1)[0]!r}")
        values[found.group(1)] = found.group(2)
    return values


@dataclass(frozen=True)
class Site:
    """The deploy-time values of site.env."""

    values: Mapping[str, str]

    REQUIRED = (
        "REGION",
        "ADMIN_SECRET_ARN",
        "TLS_SECRET_ARN",
        "CA_SECRET_ARN",
        "DB_SECRET_ARN",
        "DB_HOST",
        "DB_PORT",
        "DB_NAME",
        "APP_DB_USER",
        "SITE_DNS",
        "SITE_IP",
        "ORTHANC_ROLE_ARN",
        "BUCKET",
        "ADMIN_USER",
    )

    def __post_init__(self) -> None:
        missing = [k for k in self.REQUIRED if not self.values.get(k)]
        if missing:
            raise BootError(f"site.env lacks {', '.join(missing)}")

    def __getitem__(self, key: str) -> str:
        return self.values.get(key, "")

    @property
    def scaled(self) -> bool:
        return self["SITE_MODE"] == "scaled"

    def names(self) -> list[str]:
        """The site's names (certificate SANs): its DNS name and address, site_name, any extra names."""
        found = [f"DNS:{self['SITE_DNS']}", f"IP:{self['SITE_IP']}"]
        if self["SITE_NAME"]:
            found.append(f"DNS:{self['SITE_NAME']}")
        return found + self["SITE_EXTRA_NAMES"].split()

    def sorted_names(self) -> str:
        return ",".join(sorted(self.names()))

    def nginx_names(self) -> str:
        """The names as the lines of nginx's map of the site's names (docker/nginx.conf): a request
        for any other name is refused."""
        return "".join(f"{name.split(':', 1)[1].lower()} 1;\n" for name in sorted(self.names()))


def _number(env: Mapping[str, str], name: str, default: str) -> float:
    """A whole number of ``name`` (or its default); a BootError naming it otherwise."""
    text = env.get(name, default)
    if not text.isdigit():
        raise BootError(f"{name}: {text!r} is not allowed; allowed: a whole number such as {default}")
    return float(text)


@dataclass(frozen=True)
class Settings:
    """Where the host keeps its files, and the few settings a run off EC2 changes (tests and the
    local site: folders, the emulator's endpoint, fewer boot steps, no waiting)."""

    etc: Path = Path("/etc/orthweb")
    run: Path = Path("/run/orthweb")
    aws_endpoint: str = ""
    imds_endpoint: str = "http://169.254.169.254"
    renew_days: int = 90  # renew the server certificate this long before it expires
    boot_steps: tuple[str, ...] = BOOT_STEPS
    eip_attempts: int = 60
    backoff_sleep: float | None = None
    rds_ca_container_path: str = "/etc/orthweb/rds-ca.pem"
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        steps = tuple(env.get("ORTHWEB_BOOT_STEPS", " ".join(BOOT_STEPS)).split())
        unknown = [s for s in steps if s not in BOOT_STEPS]
        if unknown:
            raise BootError(
                f"ORTHWEB_BOOT_STEPS: unknown step(s) {', '.join(unknown)}; allowed: {' '.join(BOOT_STEPS)}"
            )
        return cls(
            etc=Path(env.get("ORTHWEB_ETC", "/etc/orthweb")),
            run=Path(env.get("ORTHWEB_RUN", "/run/orthweb")),
            aws_endpoint=env.get("ORTHWEB_AWS_ENDPOINT", ""),
            imds_endpoint=env.get("ORTHWEB_IMDS_ENDPOINT", "http://169.254.169.254"),
            renew_days=int(_number(env, "ORTHWEB_RENEW_DAYS", "90")),
            boot_steps=steps,
            eip_attempts=int(_number(env, "ORTHWEB_EIP_ATTEMPTS", "60")),
            backoff_sleep=_number(env, "ORTHWEB_BACKOFF_SLEEP", "0") if env.get("ORTHWEB_BACKOFF_SLEEP") else None,
            rds_ca_container_path=env.get("RDS_CA_CONTAINER_PATH", "/etc/orthweb/rds-ca.pem"),
            env=env,
        )

    @property
    def secrets_dir(self) -> Path:  # Orthanc's secret files (compose secrets)
        return self.run / "secrets"

    @property
    def nginx_dir(self) -> Path:  # nginx's certificate, key, client CA and CRL (a mounted folder)
        return self.run / "nginx"

    @property
    def aws_dir(self) -> Path:  # Orthanc's short-lived AWS credentials (a mounted folder)
        return self.run / "aws"

    @property
    def dicom_tls_dir(self) -> Path:  # Orthanc's DICOM TLS client certificate and key (a mounted folder)
        return self.run / "dicom-tls"


# -- files ----------------------------------------------------------------------------------------


def nginx_credentials(users: Mapping[str, str]) -> str:
    """The users' HTTP Basic Authorization values as the lines of nginx's map of them (docker/nginx.conf):
    any other value counts as a failed login. Case-sensitive regexes, as base64 is."""
    lines = []
    for user, password in sorted(users.items()):
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        lines.append(f'"~^Basic {re.escape(token)}$" 0;\n')
    return "".join(lines)


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def install_file(path: Path, text: str, mode: int = 0o600) -> bool:
    """Replace ``path`` atomically when its content differs; True when it changed."""
    data = text.encode()
    if path.is_file() and path.read_bytes() == data:
        return False
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


@contextmanager
def locked(run: Path) -> Iterator[None]:
    """One secrets run at a time on this host (the timer may fire while orthweb.service starts)."""
    private_dir(run)
    with open(run / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextmanager
def scratch(run: Path) -> Iterator[Path]:
    """A private folder for this run's temporary files, removed on every exit path (signals included:
    SIGTERM is turned into SystemExit). Leftovers of a killed run are removed first (the caller
    holds the lock, so none is live)."""
    for old in run.glob("work.*"):
        shutil.rmtree(old, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="work.", dir=run))
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


# -- the host -------------------------------------------------------------------------------------


class Host:
    """One run: the site's values, AWS clients, and each step."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        env_file = settings.etc / "site.env"
        if not env_file.is_file():
            raise BootError(f"missing {env_file}")
        self.site = Site(read_site_env(env_file))
        self.imds = Imds(settings.imds_endpoint)
        self.aws = Aws(self.site["REGION"], credentials_from(settings.env, self.imds), settings.aws_endpoint)
        self.sm = SecretsManager(self.aws)

    # -- secrets ----------------------------------------------------------------------------------

    def read(self, arn: str) -> SecretValue | None:
        try:
            return self.sm.get(arn)
        except AwsError as exc:
            log(f"reading secret {short(arn)} failed: {exc}")
            raise BootError(f"cannot read secret {short(arn)}") from None

    def store(self, arn: str, text: str, token: str, done: str, raced: str) -> SecretValue:
        """Store ``text`` as the secret's new value; returns what is stored: this value or, when
        another host stored one first with the same token, that one (read back)."""
        try:
            version = self.sm.put(arn, text, token)
        except AwsError as exc:
            if exc.code != "ResourceExistsException":
                log(f"storing secret {short(arn)} failed: {exc}")
                raise BootError(f"cannot store secret {short(arn)}") from None
            log(f"secret {short(arn)}: another host {raced} first; using that value")
            stored = self.read(arn)
            if stored is None:
                raise BootError(f"cannot read back secret {short(arn)}") from None
            return stored
        log(f"secret {short(arn)}: {done}")
        return SecretValue(text, version)

    def ensure(self, arn: str, generate: Callable[[], str]) -> SecretValue:
        """The secret's value; ``generate`` makes the first one (one host wins a race)."""
        found = self.read(arn)
        if found is not None:
            log(f"secret {short(arn)}: present, unchanged")
            return found
        return self.store(arn, generate(), FIRST_VALUE_TOKEN, "created", "stored it")

    def replace(self, arn: str, judged: SecretValue | None, reason: str, kind: str, text: str) -> SecretValue:
        """A new value for a secret whose value ``judged`` (None: none yet) was found wanting. The
        token names the version judged and the site's names: hosts that judged the same version
        agree on one replacement; a host that judged an older value than another host stored makes
        the same request as that host did, which Secrets Manager refuses (it then reads the stored one)."""
        seed = f"{kind} {judged.version if judged else 'none'} {self.site.sorted_names()}"
        token = "orthweb-" + hashlib.sha256(seed.encode()).hexdigest()[:32]
        return self.store(arn, text, token, f"replaced ({reason})", "replaced it")

    def new_admin_secret(self) -> str:
        # Made inside this process from the OS's random source: never in an argument or the environment.
        return json.dumps(
            {
                "username": self.site["ADMIN_USER"],
                "password": secrets.token_urlsafe(30),
                "db_username": self.site["APP_DB_USER"],
                "db_password": secrets.token_urlsafe(30),
            }
        )

    # -- certificates -------------------------------------------------------------------------------

    def new_ca(self) -> str:
        from . import pki

        names = self.site.names()
        cert, key = pki.make_ca(
            pki.subject(f"Orthweb site CA {self.site['SITE_DNS']}", "Orthweb"), CA_DAYS, permitted=names
        )
        log(f"generated a site CA limited to {','.join(names)} ({CA_DAYS} days)")
        return json.dumps({"ca_cert": pki.cert_pem(cert), "ca_key": pki.key_pem(key)})

    def new_server_cert(self, ca_value: SecretValue) -> str:
        from . import pki

        ca = json.loads(ca_value.text)
        ca_cert, ca_key = pki.load_cert(ca["ca_cert"]), pki.load_key(ca["ca_key"])
        names = self.site.names()
        cert, key = pki.issue(ca_cert, ca_key, pki.subject(self.site["SITE_DNS"], "Orthweb"), SERVER_DAYS, names=names)
        log(f"issued a server certificate for {','.join(names)} ({SERVER_DAYS} days)")
        return json.dumps(
            {"cert": pki.cert_pem(cert) + ca["ca_cert"], "key": pki.key_pem(key), "ca_cert": ca["ca_cert"]}
        )

    def cert_current(self, chain_pem: str, ca_pem: str) -> bool:
        """The first certificate of ``chain_pem``: issued by the site CA, for today's names, not due
        for renewal (the server's and Orthanc's DICOM TLS certificate alike)."""
        from . import pki

        try:
            cert = pki.load_certs(chain_pem)[0]
        except (ValueError, IndexError):
            return False
        return (
            pki.issued_by(cert, pki.load_cert(ca_pem))
            and not pki.expires_within(pki.not_after(cert), self.settings.renew_days)
            and pki.alt_names(cert) == set(self.site.names())
        )

    def server_cert_current(self, tls: SecretValue, ca_pem: str) -> bool:
        """The site-tls value's certificate is current (cert_current)."""
        try:
            chain = json.loads(tls.text)["cert"]
        except (ValueError, KeyError, TypeError):
            return False
        return self.cert_current(chain, ca_pem)

    def site_ca(self) -> SecretValue:
        """The site CA (certificate and key), made at the first boot, made again when the site's
        names go beyond its name constraints. Its key is read only here, and this runs only when a
        certificate is to be issued; its certificate is published without the key (publish_ca)."""
        ca_arn = self.site["CA_SECRET_ARN"]
        ca = self.ensure(ca_arn, self.new_ca)
        if not self.ca_covers_names(json.loads(ca.text)["ca_cert"]):
            log(
                f"WARNING: the site names ({self.site.sorted_names()}) are beyond the site CA's name constraints: "
                "a new site CA; clients must trust it"
            )
            ca = self.replace(ca_arn, ca, "new names", "ca", self.new_ca())
        self.warn_ca_expiry(json.loads(ca.text)["ca_cert"])
        return ca

    def ca_covers_names(self, ca_pem: str) -> bool:
        from . import pki

        return set(self.site.names()) <= (pki.permitted_names(pki.load_cert(ca_pem)) or set())

    def warn_ca_expiry(self, ca_pem: str) -> None:
        from . import pki

        if pki.expires_within(pki.not_after(pki.load_cert(ca_pem)), WARN_DAYS):
            log("WARNING: the site CA expires within 180 days; plan a new CA (README: Trust the site CA)")

    def published_ca(self) -> str | None:
        """The site CA's certificate as published for clients and for this check (no key in it);
        None before it is published (or on a site.env without the secret)."""
        arn = self.site["CA_CERT_SECRET_ARN"]
        found = self.read(arn) if arn else None
        try:
            return str(json.loads(found.text)["ca_cert"]) if found else None
        except (ValueError, KeyError, TypeError):
            return None

    def publish_ca(self, ca: SecretValue, published: str | None) -> None:
        """The CA certificate of ``ca`` in the certificate-only secret, when it is not there yet
        (hosts publishing the same certificate at once send the same request: one version)."""
        arn, pem = self.site["CA_CERT_SECRET_ARN"], json.loads(ca.text)["ca_cert"]
        if arn and published != pem:
            token = "orthweb-" + hashlib.sha256(pem.encode()).hexdigest()[:32]
            self.store(arn, json.dumps({"ca_cert": pem}), token, "site CA certificate published", "published it")

    def server_tls(self) -> tuple[SecretValue, str, SecretValue | None]:
        """The site-tls value, the site CA's certificate, and the CA with its key when it had to be
        read: only when the server certificate is not current (first boot, renewal, new names) or
        the published certificate is missing or cannot vouch for today's names."""
        published = self.published_ca()
        if published and self.ca_covers_names(published):
            tls = self.read(self.site["TLS_SECRET_ARN"])
            if tls is not None and self.server_cert_current(tls, published):
                log(f"server certificate: current (names {self.site.sorted_names()}); the site CA key was not read")
                self.warn_ca_expiry(published)
                return tls, published, None
        ca = self.site_ca_published(published)
        return self.site_certificate(ca), json.loads(ca.text)["ca_cert"], ca

    def site_ca_published(self, published: str | None) -> SecretValue:
        """The site CA with its key (site_ca), its certificate published (publish_ca) whenever the key
        is read, so the certificate-only secret follows the CA."""
        ca = self.site_ca()
        self.publish_ca(ca, published)
        return ca

    def reaches_modalities_over_tls(self) -> bool:
        """A modality has tls: the bundle carries their CA (config requires it then)."""
        path = self.settings.etc / "modality-ca.pem"
        return path.is_file() and "BEGIN CERTIFICATE" in path.read_text()

    def dicom_tls_identity(self, ca_pem: str, ca: SecretValue | None) -> list[str]:
        """Orthanc's certificate as a DICOM TLS client (C-MOVE and C-STORE to modalities with tls):
        clientAuth, from the site CA, for the site's names, made on this host and kept on its tmpfs
        (the key never leaves the host); renewed like the server certificate. Orthanc reads the files
        at every association, so nothing restarts. The CA key is read (``ca`` None) only to issue."""
        from . import pki

        folder = private_dir(self.settings.dicom_tls_dir)
        cert_path, key_path = folder / "orthanc-cert.pem", folder / "orthanc-key.pem"
        if key_path.is_file() and cert_path.is_file() and self.cert_current(cert_path.read_text(), ca_pem):
            return []
        value = json.loads((ca or self.site_ca_published(ca_pem)).text)
        cert, key = pki.issue(
            pki.load_cert(value["ca_cert"]),
            pki.load_key(value["ca_key"]),
            pki.subject(self.site["SITE_DNS"], "Orthweb"),
            SERVER_DAYS,
            names=self.site.names(),
            client=True,
        )
        install_file(key_path, pki.key_pem(key))
        install_file(cert_path, pki.cert_pem(cert) + value["ca_cert"])
        log(f"issued Orthanc's DICOM TLS client certificate ({SERVER_DAYS} days)")
        return ["orthanc-cert.pem"]

    def site_certificate(self, ca: SecretValue) -> SecretValue:
        """The site-tls value (server chain, key, CA certificate) from the site CA ``ca``, made or
        renewed when needed."""
        tls_arn = self.site["TLS_SECRET_ARN"]
        tls = self.read(tls_arn)
        ca_pem = json.loads(ca.text)["ca_cert"]
        if tls is not None and self.server_cert_current(tls, ca_pem):
            log(f"server certificate: current (names {self.site.sorted_names()})")
            return tls
        return self.replace(tls_arn, tls, "names, issuer or expiry", "tls", self.new_server_cert(ca))

    def client_trust(self) -> tuple[str, str]:
        """The DICOM client CA and CRL nginx checks client certificates against: from the operators'
        secret (both from one version: a CRL of another CA makes nginx refuse everyone); before the
        first certificate is issued, an anchor nobody holds the key of, so nginx starts and refuses
        every client. The anchor is made once and kept (the refresh does not reload nginx for a new one)."""
        from . import pki

        arn = self.site["CLIENTS_SECRET_ARN"]
        stored = self.read(arn) if arn else None
        if stored is not None:
            value = json.loads(stored.text)
            ca, crl = value["ca_cert"], value["crl"]
            try:
                matching = pki.crl_signed_by(pki.load_crl(crl), pki.load_cert(ca))
            except ValueError:
                matching = False
            if not matching:
                raise BootError(
                    f"the DICOM client CA and CRL in {short(arn)} do not match; nginx keeps the previous ones"
                )
            if pki.expires_within(pki.next_update(pki.load_crl(crl)), WARN_DAYS):
                log(
                    "WARNING: the DICOM client CRL expires within 180 days: "
                    "re-sign it (make modality-cert ... revoke/issue)"
                )
            return ca, crl
        kept_ca, kept_crl = self.settings.nginx_dir / "client-ca.pem", self.settings.nginx_dir / "client-crl.pem"
        if kept_ca.is_file() and kept_crl.is_file():
            try:
                if NO_CLIENT_CA in pki.load_cert(kept_ca.read_text()).subject.rfc4514_string():
                    return kept_ca.read_text(), kept_crl.read_text()
            except ValueError:
                pass
        cert, key = pki.make_ca(pki.subject(NO_CLIENT_CA), 3650, bits=2048)
        return pki.cert_pem(cert), pki.crl_pem(pki.sign_crl(cert, key, {}, days=3650))

    # -- the database role --------------------------------------------------------------------------

    def _psql(self, user: str, password: str, sql: str, work: Path) -> subprocess.CompletedProcess[str]:
        """psql over verify-full TLS; the password in a pgpass file of this run's scratch folder."""
        pgpass = work / "pgpass"
        install_file(pgpass, f"*:*:*:{user}:{password}\n")
        site = self.site
        rds_ca = self.settings.etc / "rds-ca.pem"
        conninfo = (
            f"host={site['DB_HOST']} port={site['DB_PORT']} dbname={site['DB_NAME']} user={user} "
            f"sslmode=verify-full sslrootcert={rds_ca} connect_timeout=10"
        )
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSFILE": str(pgpass)}
        try:
            return subprocess.run(
                ["psql", "-X", "-q", "-t", "-v", "ON_ERROR_STOP=1", conninfo],
                input=sql,
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
        finally:
            pgpass.unlink(missing_ok=True)

    def ensure_db_role(self, admin: Mapping[str, str], work: Path) -> None:
        """The app role Orthanc uses; the RDS master credentials serve only to create or repair it."""
        role, db = self.site["APP_DB_USER"], self.site["DB_NAME"]
        if self._psql(role, admin["db_password"], "select 1", work).returncode == 0:
            log(f"database role {role}: present, unchanged")
            return
        master_value = self.read(self.site["DB_SECRET_ARN"])  # only now is the master secret needed
        if master_value is None:
            raise BootError("cannot read the database master secret")
        master = json.loads(master_value.text)

        def quote(text: str) -> str:
            return "'" + text.replace("'", "''") + "'"

        # One host at a time (hosts booting together): the second finds the role the first committed.
        sql = f"""
BEGIN;
SELECT pg_advisory_xact_lock(hashtext('orthweb: database role {role}'));
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {quote(role)}) THEN CREATE ROLE "{role}" LOGIN; END IF;
END $do$;
ALTER ROLE "{role}" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {quote(admin["db_password"])};
GRANT "{role}" TO "{master["username"]}";
ALTER DATABASE "{db}" OWNER TO "{role}";
ALTER SCHEMA public OWNER TO "{role}";
COMMIT;
"""  # noqa: S608 - names come from site.env, the password is quoted; the text goes to psql's stdin
        done = self._psql(master["username"], master["password"], sql, work)
        if done.returncode != 0:
            raise BootError(
                f"cannot create the database role {role} (database {self.site['DB_HOST']}:{self.site['DB_PORT']})"
            )
        log(f"database role {role}: created or password reset (owner of database {db})")

    # -- Orthanc's AWS credentials -------------------------------------------------------------------

    def orthanc_credentials(self) -> None:
        """Short-lived credentials of Orthanc's own role, in a mounted folder; renamed into place, so
        the SDK in the container (which re-reads the file every 5 minutes) never sees half of it."""
        session = "orthanc-" + socket.gethostname().split(".")[0][:40]
        try:
            c = assume_role(self.aws, self.site["ORTHANC_ROLE_ARN"], session, CREDENTIAL_SECONDS)
        except AwsError as exc:
            raise BootError(f"cannot assume Orthanc's role: {exc}") from None
        folder = private_dir(self.settings.aws_dir)
        text = (
            f"[default]\naws_access_key_id = {c['AccessKeyId']}\naws_secret_access_key = {c['SecretAccessKey']}\n"
            f"aws_session_token = {c['SessionToken']}\n"
        )
        install_file(folder / "credentials", text)
        log(f"Orthanc's role credentials: renewed (valid {CREDENTIAL_SECONDS}s)")

    # -- runtime files ------------------------------------------------------------------------------

    def named_users(self) -> dict[str, dict[str, Any]]:
        """The enabled named users of the users secret (`make user`), by name; none when the site has
        no such secret or it holds no value yet. A user named like the admin is left out."""
        arn = self.site["USERS_SECRET_ARN"]
        found = self.read(arn) if arn else None
        if found is None:
            return {}
        try:
            users = json.loads(found.text)["users"]
        except (ValueError, KeyError, TypeError):
            raise BootError(f"secret {short(arn)} is not the users document make user writes") from None
        return {
            name: user
            for name, user in users.items()
            if user.get("enabled", True) and name != self.site["ADMIN_USER"] and user.get("role") in USER_ROLES
        }

    def runtime_files(self, admin: Mapping[str, str], tls: Mapping[str, str]) -> list[str]:
        """Orthanc's secret files and nginx's certificate and names files; returns the names that changed."""
        s, site = self.settings, self.site
        private_dir(s.secrets_dir)
        private_dir(s.nginx_dir)
        quote = urllib.parse.quote
        uri = (
            f"postgresql://{quote(site['APP_DB_USER'], safe='')}:{quote(admin['db_password'], safe='')}"
            f"@{site['DB_HOST']}:{site['DB_PORT']}/{site['DB_NAME']}"
            f"?sslmode=verify-full&sslrootcert={quote(s.rds_ca_container_path)}"
        )
        users = self.named_users()
        passwords = {admin["username"]: admin["password"], **{n: u["password"] for n, u in users.items()}}
        roles = {admin["username"]: "admin", **{n: u["role"] for n, u in users.items()}}
        files = {
            s.secrets_dir / "db-connection-uri": uri,
            s.secrets_dir / "registered-users": json.dumps(passwords, sort_keys=True),
            s.secrets_dir / "user-roles": json.dumps(roles, sort_keys=True),
            s.nginx_dir / "site-cert.pem": tls["cert"],
            s.nginx_dir / "site-key.pem": tls["key"],
            s.nginx_dir / "site-names.map": site.nginx_names(),
            s.nginx_dir / "users.map": nginx_credentials(passwords),
        }
        if site["DICOM_CLIENT_AUTH"] == "certificate":
            ca, crl = self.client_trust()
            files[s.nginx_dir / "client-ca.pem"] = ca
            files[s.nginx_dir / "client-crl.pem"] = crl
        changed = [path.name for path, text in files.items() if install_file(path, text)]
        install_file(s.run / "site-ca.pem", tls.get("ca_cert", ""), mode=0o644)
        return changed

    def orthanc_config(self) -> list[str]:
        """The bundle's orthanc.json with this deployment's bucket and region (and, with several
        servers on one index, this server's name: its instance id)."""
        template = self.settings.etc / "orthanc.template.json"
        if not template.is_file():
            return []
        config: dict[str, Any] = json.loads(template.read_text())
        config["AwsS3Storage"].update({"BucketName": self.site["BUCKET"], "Region": self.site["REGION"]})
        if self.site.scaled:
            try:
                config["DatabaseServerIdentifier"] = self.imds.get("instance-id")
            except OSError:
                config["DatabaseServerIdentifier"] = socket.gethostname().split(".")[0]
        changed = install_file(self.settings.etc / "orthanc.json", json.dumps(config, indent=2) + "\n", mode=0o644)
        return ["orthanc.json"] if changed else []

    def secrets(self) -> list[str]:
        """Every secret-bearing runtime file, up to date; returns the names of those that changed."""
        s = self.settings
        with locked(s.run), scratch(s.run) as work:
            admin_value = self.ensure(self.site["ADMIN_SECRET_ARN"], self.new_admin_secret)
            byo = self.site["BYO_TLS_SECRET"]
            ca, ca_pem = None, ""
            if byo:
                found = self.read(byo)
                if found is None:
                    raise BootError(f"cannot read your certificate secret {byo}")
                tls_value = found
                log(f"using your certificate from {byo}")
            else:
                tls_value, ca_pem, ca = self.server_tls()
            admin = json.loads(admin_value.text)
            self.ensure_db_role(admin, work)
            self.orthanc_credentials()
            changed = self.runtime_files(admin, json.loads(tls_value.text)) + self.orthanc_config()
            if self.reaches_modalities_over_tls():
                if not ca_pem:  # your own server certificate: Orthanc's client one still comes from the site CA
                    ca_pem = self.published_ca() or ""
                if not ca_pem:
                    ca = self.site_ca_published(None)
                    ca_pem = json.loads(ca.text)["ca_cert"]
                changed += self.dicom_tls_identity(ca_pem, ca)
            log(f"runtime files changed: {' '.join(changed)}" if changed else "runtime files: unchanged")
            install_file(s.run / "last-changed", "".join(f"{name}\n" for name in changed))
            return changed

    # -- refresh ------------------------------------------------------------------------------------

    def compose(self, *args: str) -> None:
        etc = self.settings.etc
        command = ["docker", "compose", "-p", "orthweb", "--env-file", str(etc / "site.env")]
        command += ["-f", str(etc / "docker-compose.yml"), *args]
        if subprocess.run(command).returncode != 0:
            raise BootError(f"docker compose {' '.join(args)} failed")

    def refresh(self) -> None:
        self.egress(only_if_changed=True)
        changed = set(self.secrets())
        if changed & {"db-connection-uri", "registered-users", "user-roles", "orthanc.json"}:
            log("Orthanc's configuration changed: recreating orthanc")
            self.compose("up", "-d", "--force-recreate", "--no-deps", "orthanc")
            changed.add("nginx-upstream")  # the new container may have a new address: nginx resolves it again
        if changed & {
            "site-cert.pem",
            "site-key.pem",
            "site-names.map",
            "users.map",
            "client-ca.pem",
            "client-crl.pem",
            "nginx-upstream",
        }:
            log("reloading nginx (certificate, names, users, client certificates or upstream changed)")
            self.compose("exec", "-T", "nginx", "nginx", "-s", "reload")

    # -- boot steps -----------------------------------------------------------------------------------

    def step_network(self) -> None:
        """The single host has no public address until Terraform attaches the site's Elastic IP."""
        if self.site.scaled:
            log("scaled profile: the load balancer holds the site's addresses")
            return
        ip = self.site["SITE_IP"]
        for attempt in range(1, self.settings.eip_attempts + 1):
            try:
                if self.imds.get("public-ipv4").strip() == ip:
                    log(f"Elastic IP {ip} attached")
                    return
            except OSError:
                pass
            if attempt == 1:
                log(f"waiting for the Elastic IP {ip}")
            if attempt < self.settings.eip_attempts:
                time.sleep(5)
        raise BootError(f"the Elastic IP {ip} was not attached within 5 minutes (the boot unit will try again)")

    def step_packages(self) -> None:
        missing = [p for p in PACKAGES if subprocess.run(["rpm", "-q", p], capture_output=True).returncode != 0]
        if missing:
            log(f"installing {' '.join(missing)}")
            if subprocess.run(["dnf", "install", "-y", "-q", *missing]).returncode != 0:
                raise BootError("package installation failed")
        else:
            log("packages: present")
        run_checked(["systemctl", "enable", "--now", "docker.service"])

    def step_compose(self) -> None:
        if COMPOSE_PLUGIN.is_file() and sha256_of(COMPOSE_PLUGIN) == COMPOSE_SHA256:
            log(f"docker compose {COMPOSE_VERSION}: present")
            return
        with tempfile.TemporaryDirectory(dir=self.settings.run) as folder:
            tmp = Path(folder) / "docker-compose"
            fetch = ["curl", "--fail", "--silent", "--show-error", "--location", "--proto", "=https", "--tlsv1.2"]
            if subprocess.run([*fetch, "--retry", "5", "-o", str(tmp), COMPOSE_URL]).returncode != 0:
                raise BootError("docker compose download failed")
            if sha256_of(tmp) != COMPOSE_SHA256:
                raise BootError("docker compose download failed its SHA-256 check")
            COMPOSE_PLUGIN.parent.mkdir(parents=True, exist_ok=True)
            tmp.chmod(0o755)
            shutil.move(str(tmp), COMPOSE_PLUGIN)
        log(f"docker compose {COMPOSE_VERSION} installed (SHA-256 verified)")

    def step_rds_ca(self) -> None:
        from . import pki

        path = self.settings.etc / "rds-ca.pem"
        try:
            found = pki.load_certs(path.read_text())
        except (OSError, ValueError):
            found = []
        if not found:
            raise BootError(f"{path} is not a PEM certificate bundle")
        log(f"RDS CA certificates: {len(found)} present")

    def step_monitoring(self) -> None:
        """The CloudWatch agent reports the root volume's use (the alarm fires above 80 %)."""
        config = Path("/opt/aws/amazon-cloudwatch-agent/etc/orthweb.json")
        if subprocess.run(["rpm", "-q", "amazon-cloudwatch-agent"], capture_output=True).returncode != 0:
            if subprocess.run(["dnf", "install", "-y", "-q", "amazon-cloudwatch-agent"]).returncode != 0:
                raise BootError("installing the CloudWatch agent failed")
        document = agent_document(self.site["METRICS_NAMESPACE"], self.site["NAME"], self.site["HOST_LOG_GROUP"])
        config.parent.mkdir(parents=True, exist_ok=True)
        install_file(config, json.dumps(document, indent=1), mode=0o644)
        ctl = "/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl"
        if subprocess.run(
            [ctl, "-a", "fetch-config", "-m", "ec2", "-s", "-c", f"file:{config}"], capture_output=True
        ).returncode:
            raise BootError("starting the CloudWatch agent failed")
        shipped_to = f"; this program's log to {self.site['HOST_LOG_GROUP']}" if self.site["HOST_LOG_GROUP"] else ""
        namespace, site = self.site["METRICS_NAMESPACE"], self.site["NAME"]
        log(f"CloudWatch agent: root volume use reported to {namespace} (Site={site}){shipped_to}")

    def step_services(self) -> None:
        """Start the site. No lock is held here: orthweb.service's start runs ``secrets``, which
        takes the lock (holding it across the restart was the boot's deadlock). A failed start fails
        the boot, and orthweb-boot.service tries again."""
        run_checked(["systemctl", "daemon-reload"])
        run_checked(["systemctl", "enable", "orthweb.service", "orthweb-refresh.timer"])
        run_checked(["systemctl", "start", "orthweb-refresh.timer"])
        run_checked(["systemctl", "restart", "orthweb.service"])
        log("services started: orthweb.service, orthweb-refresh.timer")

    def egress_rules(self) -> Egress:
        """The containers' egress rules for today's S3 ranges (egress.py)."""

        def s3_ranges(prefix_list: str) -> list[str]:
            try:
                return prefix_list_cidrs(self.aws, prefix_list)
            except AwsError as exc:
                log(f"reading the S3 prefix list {prefix_list} failed: {exc}")
                raise BootError(f"cannot read S3's address ranges ({prefix_list})") from None

        return Egress.from_site(self.site, self.settings.etc / "egress.json", s3_ranges)

    def egress(self, *, only_if_changed: bool = False) -> None:
        """Apply the containers' egress rules (orthweb.service, before compose starts them). With
        ``only_if_changed`` (the refresh): only when rules were applied before and S3's ranges changed."""
        applied = self.settings.run / "egress.rules"
        if only_if_changed and not applied.is_file():
            return  # orthweb.service has not applied them (yet, or off EC2): its start will
        egress = self.egress_rules()
        rules = egress.rules()
        if only_if_changed and applied.read_text() == rules:
            return
        apply(egress)
        private_dir(self.settings.run)
        install_file(applied, rules, mode=0o644)
        log(
            f"container egress: DNS, database, {len(egress.s3_cidrs)} S3 range(s), "
            f"{len(egress.modalities)} C-MOVE destination(s); everything else refused"
        )

    def backoff(self) -> None:
        """A failed boot is retried by systemd; wait longer each time (15 s doubling, at most 5 min)."""
        counter = private_dir(self.settings.run) / "boot-attempts"
        attempts = int(counter.read_text()) if counter.is_file() else 0
        counter.write_text(str(attempts + 1))
        if attempts == 0:
            return
        wait = min(15 * 2 ** (attempts - 1), 300)
        log(f"boot attempt {attempts + 1}: waiting {wait}s first")
        time.sleep(wait if self.settings.backoff_sleep is None else self.settings.backoff_sleep)

    def boot(self) -> None:
        self.backoff()
        for step in self.settings.boot_steps:
            getattr(self, f"step_{step}")()
        (self.settings.run / "boot-attempts").unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_checked(command: list[str]) -> None:
    if subprocess.run(command).returncode != 0:
        raise BootError(f"{' '.join(command)} failed")


def agent_document(namespace: str, site: str, host_log_group: str) -> dict[str, Any]:
    """The CloudWatch agent's configuration: the root volume's use as <namespace> disk_used_percent
    by Site (the agent names a metric <plugin>_<measurement>), and the host log shipped when asked."""
    disk = {
        "measurement": ["used_percent"],
        "resources": ["/"],
        "drop_device": True,
        "append_dimensions": {"Site": site},
    }
    document: dict[str, Any] = {
        # root: the host log is root's alone (0600 in a 0700 folder).
        "agent": {"metrics_collection_interval": 60, "run_as_user": "root"},
        "metrics": {
            "namespace": namespace,
            "metrics_collected": {"disk": disk},
            "aggregation_dimensions": [["Site"]],
        },
    }
    if host_log_group:
        shipped = {
            "file_path": f"/var/log/orthweb/{LOG_FILE}",
            "log_group_name": host_log_group,
            "log_stream_name": "{instance_id}",
        }
        document["logs"] = {"logs_collected": {"files": {"collect_list": [shipped]}}}
    return document


def main(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    os.umask(0o077)
    environment = os.environ if env is None else env
    logs = environment.get("LOGS_DIRECTORY", "").split(":")[0]  # set by systemd for LogsDirectory=
    _log_to[:] = [Path(logs) / LOG_FILE] if logs else []
    step = argv[0] if argv else "boot"
    if step not in STEPS or len(argv) > 1:
        log(f"ERROR: {USAGE}")
        return 2
    try:
        host = Host(Settings.from_env(environment))
        {"boot": host.boot, "secrets": host.secrets, "refresh": host.refresh, "egress": host.egress}[step]()
    except (BootError, EgressError) as exc:
        log(f"ERROR: {exc}")
        return 1
    log(f"done: {step}")
    return 0
