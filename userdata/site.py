"""Render the application layer (docker/ templates) from values: a plain function, used at synth
time for the host (values may be CDKTF tokens) and by the local harness (real values)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from config import ROOT
from config.facts import (
    DICOM_TLS_PORT,
    DICOMWEB_ROOT,
    HTTPS_PORT,
    NGINX_IMAGE,
    ORTHANC_DICOM_PORT,
    ORTHANC_HTTP_PORT,
    ORTHANC_IMAGE,
    SITE_LABEL,
)
from config.inputs import DicomModality

DOCKER_DIR = ROOT / "docker"
# Fits a large CT/MR study uploaded through the REST API; bulk transfers go over DICOM.
MAX_BODY_SIZE = "4g"
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


class TemplateError(ValueError):
    """A template names a value that was not given (or a value is given that no template uses)."""


def fill(template: str, values: dict[str, str]) -> str:
    missing = sorted(set(PLACEHOLDER.findall(template)) - set(values))
    if missing:
        raise TemplateError(f"no value for {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


# Mozilla "intermediate" (AEAD suites only): what dcmtk 3.6.7+, dcm4che and browsers negotiate.
CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)
# Docker's embedded DNS on the compose network; short validity so a recreated container is found.
DOCKER_RESOLVER = "127.0.0.11 valid=10s ipv6=off"
NGINX_FILES = "/etc/nginx/orthweb"
# Failed logins per client address: this many at once, then one every 10 seconds (429 beyond).
LOGIN_FAILURE_BURST = 10
LOGIN_FAILURE_RATE = "6r/m"
# Orthanc's own DICOM TLS identity, issued from the site CA by the host into a mounted folder, and
# the CA of the modalities it reaches over DICOM TLS (from the boot bundle).
ORTHANC_DICOM_TLS = "/etc/orthanc/dicom-tls"
ORTHANC_MODALITY_CA = "/etc/orthanc/modality-ca.pem"
# The roles script in the container (docker/orthweb_roles.py, mounted by compose).
ORTHANC_ROLES_SCRIPT = "/etc/orthanc/orthweb_roles.py"


@dataclass(frozen=True)
class NginxValues:
    """Where nginx listens, where it forwards, and where its files live."""

    http_upstream: str = f"orthanc:{ORTHANC_HTTP_PORT}"
    dicom_upstream: str = f"orthanc:{ORTHANC_DICOM_PORT}"
    https_listen: str = str(HTTPS_PORT)
    dicom_listen: str = str(DICOM_TLS_PORT)
    cert_path: str = f"{NGINX_FILES}/site-cert.pem"
    key_path: str = f"{NGINX_FILES}/site-key.pem"
    # The site's names as nginx map lines, written by the host beside the certificate.
    site_names_path: str = f"{NGINX_FILES}/site-names.map"
    # The site users' Authorization values as nginx map lines (root-only, written by the host).
    credentials_path: str = f"{NGINX_FILES}/users.map"
    # DICOM client certificates: the CA and revocation list to check them against; empty: not asked for.
    client_ca_path: str = ""
    client_crl_path: str = ""
    resolver: str = DOCKER_RESOLVER  # empty when the upstreams are IP addresses
    # nginx >= 1.25.1 (the image) takes "http2 on;"; older builds (Debian 12's 1.22, used by the
    # local site) only the deprecated "listen ... ssl http2".
    http2_directive: bool = True
    pid_path: str = "/var/run/nginx.pid"
    error_log: str = "/dev/stderr"
    access_log: str = "/dev/stdout"
    temp_dir: str = "/var/cache/nginx"
    user: str = "nginx"
    load_modules: Sequence[str] = ()


def client_files(directory: str, required: bool = True) -> tuple[str, str]:
    """(client CA, CRL) paths for NginxValues when DICOM client certificates are ``required``."""
    return (f"{directory}/client-ca.pem", f"{directory}/client-crl.pem") if required else ("", "")


def _client_verification(v: NginxValues) -> str:
    if not v.client_ca_path:
        return ""
    return (
        "        # Mutual TLS: only modalities holding a certificate from the site's client CA, not revoked.\n"
        "        ssl_verify_client on;\n"
        "        ssl_verify_depth 1;\n"
        f"        ssl_client_certificate {v.client_ca_path};\n"
        f"        ssl_crl {v.client_crl_path};"
    )


def render_nginx(v: NginxValues) -> str:
    return fill(
        (DOCKER_DIR / "nginx.conf").read_text(),
        {
            "load_modules": "\n".join(f"load_module {m};" for m in v.load_modules),
            "user_directive": f"user {v.user};" if v.user else "",
            "pid_path": v.pid_path,
            "error_log": v.error_log,
            "access_log": v.access_log,
            "temp_dir": v.temp_dir,
            "max_body_size": MAX_BODY_SIZE,
            "https_listen": v.https_listen,
            "dicom_listen": v.dicom_listen,
            "cert_path": v.cert_path,
            "key_path": v.key_path,
            "site_names_path": v.site_names_path,
            "credentials_path": v.credentials_path,
            "login_rate": LOGIN_FAILURE_RATE,
            "login_burst": str(LOGIN_FAILURE_BURST),
            "http_upstream": v.http_upstream,
            "dicom_upstream": v.dicom_upstream,
            "resolver": f"resolver {v.resolver};" if v.resolver else "",
            "http2_directive": "http2 on;" if v.http2_directive else "",
            "http2_listen": "" if v.http2_directive else " http2",
            "ciphers": CIPHERS,
            "client_verification": _client_verification(v),
        },
    )


@dataclass(frozen=True)
class OrthancValues:
    ae_title: str
    bucket: str
    region: str
    modalities: Sequence[DicomModality] = ()
    dicom_port: int = ORTHANC_DICOM_PORT
    http_port: int = ORTHANC_HTTP_PORT
    storage_directory: str = "/var/lib/orthanc/db"
    # Several Orthanc servers on one PostgreSQL index (Orthanc >= 1.9.2, PostgreSQL plugin >= 4.0):
    # no index lock (always off here), jobs not saved in the shared database (each server keeps its
    # own), and each server named (DatabaseServerIdentifier; the host sets it to its instance id).
    several_servers: bool = False
    server_identifier: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def render_orthanc(v: OrthancValues) -> str:
    config = json.loads((DOCKER_DIR / "orthanc.json").read_text())
    config.update(
        {
            "Name": SITE_LABEL,
            "DicomAet": v.ae_title,
            "DicomPort": v.dicom_port,
            "HttpPort": v.http_port,
            "StorageDirectory": v.storage_directory,
        }
    )
    config["DicomModalities"] = {
        m.aet: {
            "AET": m.aet,
            "Host": m.host,
            "Port": m.port,
            **{f"Allow{right.capitalize()}": right in m.rights for right in ("echo", "find", "move", "get", "store")},
            **({"UseDicomTls": True} if m.tls else {}),
        }
        for m in v.modalities
    }
    if any(m.tls for m in v.modalities):
        # Orthanc as a DICOM TLS client (1.9.0+): these keys serve its outgoing associations whatever
        # DicomTlsEnabled says (off: nginx terminates the incoming TLS); files read per association.
        config.update(
            {
                "DicomTlsCertificate": f"{ORTHANC_DICOM_TLS}/orthanc-cert.pem",
                "DicomTlsPrivateKey": f"{ORTHANC_DICOM_TLS}/orthanc-key.pem",
                "DicomTlsTrustedCertificates": ORTHANC_MODALITY_CA,
                "DicomTlsRemoteCertificateRequired": True,
            }
        )
    config["AwsS3Storage"].update({"BucketName": v.bucket, "Region": v.region})
    config["DicomWeb"]["Root"] = DICOMWEB_ROOT
    # Orthanc's Python plugin runs the roles script (the production image enables it with this key).
    config["PythonScript"] = ORTHANC_ROLES_SCRIPT
    if v.several_servers:
        config["SaveJobs"] = False
    if v.server_identifier:
        config["DatabaseServerIdentifier"] = v.server_identifier
    config.update(v.extra)
    return json.dumps(config, indent=2) + "\n"


@dataclass(frozen=True)
class ComposeValues:
    orthanc_image: str = ORTHANC_IMAGE
    nginx_image: str = NGINX_IMAGE
    # Ship container logs to the CloudWatch group named by ${LOG_GROUP} in site.env (else Docker's
    # default json-file logging on the host).
    container_logs: bool = True


def _logging(v: ComposeValues, service: str) -> str:
    if not v.container_logs:
        return ""
    return (
        "    logging:\n      driver: awslogs\n      options:\n"
        '        awslogs-group: "${LOG_GROUP}"\n        awslogs-region: "${REGION}"\n'
        f'        tag: "{service}/{{{{.ID}}}}"'
    )


def render_compose(v: ComposeValues) -> str:
    return fill(
        (DOCKER_DIR / "docker-compose.yml").read_text(),
        {
            "orthanc_image": v.orthanc_image,
            "nginx_image": v.nginx_image,
            "https_port": str(HTTPS_PORT),
            "dicom_tls_port": str(DICOM_TLS_PORT),
            "orthanc_http_port": str(ORTHANC_HTTP_PORT),
            "orthanc_dicom_port": str(ORTHANC_DICOM_PORT),
            "orthanc_logging": _logging(v, "orthanc"),
            "nginx_logging": _logging(v, "nginx"),
        },
    )
