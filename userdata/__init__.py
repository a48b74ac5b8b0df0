"""What the host boots from, rendered at synth time from the files in this folder and docker/.

Two parts, so the host can grow without outgrowing EC2's 16 KB user-data limit:

- the **boot bundle**: a deterministic tar.gz of the host's program (``orthweb-bootstrap`` and
  userdata/host), the compose file, the nginx and Orthanc configuration, the region's RDS CAs and
  the systemd units; stored (KMS-encrypted) in the config bucket under its SHA-256;
- the **user data**: a short cloud-config with ``site.env`` (deploy-time values: ARNs, endpoints,
  names, and the bundle's location and SHA-256), ``orthweb-fetch`` and ``orthweb-boot.service``,
  which fetches the bundle, checks its SHA-256, unpacks it and runs the bootstrap, retrying with
  backoff until it succeeds.

Deploy-time values may be CDKTF tokens; they stay tokens in the text and become Terraform
interpolations (see modules/hcl.py). The bundle holds no token and no secret.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from config import rds_ca
from config.facts import (
    APP_DB_USER,
    DEFAULT_AE_TITLE,
    HOST_METRICS_NAMESPACE,
    HTTPS_PORT,
    NGINX_IMAGE,
    ORTHANC_ADMIN_USER,
    ORTHANC_IMAGE,
)
from config.inputs import DicomModality
from userdata.host import egress
from userdata.site import (
    DOCKER_DIR,
    ComposeValues,
    NginxValues,
    OrthancValues,
    client_files,
    render_compose,
    render_nginx,
    render_orthanc,
)

HERE = Path(__file__).resolve().parent
# EC2 refuses user data over 16 KB (after compression, before base64).
USER_DATA_LIMIT = 16 * 1024
# What the user data may use of it: the rest is room for the host to grow (a test holds it).
USER_DATA_BUDGET = 4 * 1024
BUNDLE_PREFIX = "bundles/"
# Where the host's program (userdata/host, as the package orthweb_host) lives on the host.
HOST_LIB = "usr/local/lib/orthweb"
_SAFE_ENV_VALUE = re.compile(r"^[^'\n\\]*$")


@dataclass(frozen=True)
class HostValues:
    """Everything the host needs to know at boot that is not a secret (values may be tokens)."""

    region: str
    bucket: str
    admin_secret_arn: str
    tls_secret_arn: str
    ca_secret_arn: str
    clients_secret_arn: str
    db_secret_arn: str
    db_host: str
    db_port: str
    db_name: str
    site_dns: str
    site_ip: str
    log_group: str
    orthanc_role_arn: str
    config_bucket: str
    site_name: str = ""
    byo_tls_secret: str = ""
    dicom_client_auth: str = "none"
    # "single": one host behind the site's Elastic IP; "scaled": hosts behind a load balancer, whose
    # further addresses the certificate also names (site_extra_names, space-separated "IP:..." SANs).
    site_mode: str = "single"
    site_extra_names: str = ""
    # The site's name: the host's CloudWatch agent reports its disk use under it.
    name: str = "orthweb"
    # Where the CloudWatch agent ships the host program's own log (empty: not shipped).
    host_log_group: str = ""
    # The site CA's certificate without its key (what clients trust; the host checks against it
    # without reading the CA key). Empty: the host reads the CA secret on every run.
    ca_cert_secret_arn: str = ""
    # The named users (`make user`); empty: the admin user only.
    users_secret_arn: str = ""
    # What the containers may reach (userdata/host/egress.py): the VPC's range (the database and the
    # DNS resolver in it) and the ID of AWS's managed prefix list of S3's ranges in the region.
    vpc_cidr: str = ""
    s3_prefix_list: str = ""


@dataclass(frozen=True)
class AppValues:
    """The application layer's settings, known at synth time: they go into the boot bundle."""

    ae_title: str = DEFAULT_AE_TITLE
    modalities: tuple[DicomModality, ...] = ()
    orthanc_image: str = ORTHANC_IMAGE
    nginx_image: str = NGINX_IMAGE
    container_logs: bool = True
    # The region as plain text: selects the RDS CA certificates.
    region_name: str = "us-east-1"
    dicom_client_auth: str = "none"
    # Several Orthanc servers on one index (the scaled profile).
    several_servers: bool = False
    # PEM of the CA(s) of the modalities Orthanc reaches over DICOM TLS (modality_ca_file's text).
    modality_ca: str = ""


@dataclass(frozen=True)
class Bundle:
    data: bytes
    sha256: str

    @property
    def key(self) -> str:
        return f"{BUNDLE_PREFIX}{self.sha256}.tar.gz"


# Path on the host -> (mode, content maker). The units and the script come from this folder.
def bundle_files(a: AppValues) -> dict[str, tuple[int, str]]:
    client_ca, client_crl = client_files("/etc/nginx/orthweb", a.dicom_client_auth == "certificate")
    nginx = NginxValues(client_ca_path=client_ca, client_crl_path=client_crl)
    unit = 0o644
    return {
        "usr/local/sbin/orthweb-bootstrap": (0o755, (HERE / "orthweb-bootstrap").read_text()),
        **{
            f"{HOST_LIB}/orthweb_host/{module.name}": (0o644, module.read_text())
            for module in sorted((HERE / "host").glob("*.py"))
        },
        "etc/orthweb/docker-compose.yml": (
            unit,
            render_compose(
                ComposeValues(orthanc_image=a.orthanc_image, nginx_image=a.nginx_image, container_logs=a.container_logs)
            ),
        ),
        "etc/orthweb/nginx.conf": (unit, render_nginx(nginx)),
        # Bucket and region are deploy-time values: the bootstrap writes orthanc.json from this.
        "etc/orthweb/orthanc.template.json": (
            unit,
            render_orthanc(
                OrthancValues(
                    ae_title=a.ae_title,
                    bucket="",
                    region="",
                    modalities=a.modalities,
                    several_servers=a.several_servers,
                )
            ),
        ),
        "etc/orthweb/rds-ca.pem": (unit, rds_ca.pem_for(a.region_name)),
        "etc/orthweb/modality-ca.pem": (unit, a.modality_ca),
        "etc/orthweb/orthweb_roles.py": (unit, (DOCKER_DIR / "orthweb_roles.py").read_text()),
        "etc/orthweb/egress.json": (
            unit,
            # S3 answers on the HTTPS port.
            egress.bundle_document(HTTPS_PORT, [(m.host, m.port) for m in a.modalities if "move" in m.rights]),
        ),
        **{
            f"etc/systemd/system/{name}": (unit, (HERE / name).read_text())
            for name in ("orthweb.service", "orthweb-refresh.service", "orthweb-refresh.timer")
        },
    }


def build_bundle(a: AppValues) -> Bundle:
    """The boot bundle, byte for byte the same for the same inputs (fixed times, owners, order)."""
    return pack_bundle(bundle_files(a))


def pack_bundle(files: dict[str, tuple[int, str]]) -> Bundle:
    """Files (path on the host -> mode, text) as a deterministic tar.gz."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, (mode, text) in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    data = packed.getvalue()
    return Bundle(data, hashlib.sha256(data).hexdigest())


def site_env(v: HostValues, bundle: Bundle | None = None) -> str:
    values = {
        "REGION": v.region,
        "BUCKET": v.bucket,
        "ADMIN_SECRET_ARN": v.admin_secret_arn,
        "TLS_SECRET_ARN": v.tls_secret_arn,
        "CA_SECRET_ARN": v.ca_secret_arn,
        "CA_CERT_SECRET_ARN": v.ca_cert_secret_arn,
        "USERS_SECRET_ARN": v.users_secret_arn,
        "CLIENTS_SECRET_ARN": v.clients_secret_arn,
        "DB_SECRET_ARN": v.db_secret_arn,
        "DB_HOST": v.db_host,
        "DB_PORT": v.db_port,
        "DB_NAME": v.db_name,
        "APP_DB_USER": APP_DB_USER,
        "ADMIN_USER": ORTHANC_ADMIN_USER,
        "SITE_DNS": v.site_dns,
        "SITE_IP": v.site_ip,
        "SITE_NAME": v.site_name,
        "BYO_TLS_SECRET": v.byo_tls_secret,
        "ORTHANC_ROLE_ARN": v.orthanc_role_arn,
        "DICOM_CLIENT_AUTH": v.dicom_client_auth,
        "LOG_GROUP": v.log_group,
        "HOST_LOG_GROUP": v.host_log_group,
        "SITE_MODE": v.site_mode,
        "SITE_EXTRA_NAMES": v.site_extra_names,
        "NAME": v.name,
        "VPC_CIDR": v.vpc_cidr,
        "S3_PREFIX_LIST": v.s3_prefix_list,
        "METRICS_NAMESPACE": HOST_METRICS_NAMESPACE,
        **(
            {"BUNDLE_BUCKET": v.config_bucket, "BUNDLE_OBJECT": bundle.key, "BUNDLE_SHA256": bundle.sha256}
            if bundle
            else {}
        ),
    }
    for key, value in values.items():
        if not _SAFE_ENV_VALUE.match(value):
            raise ValueError(f"{key}: value cannot be written to site.env safely")
    lines = [
        "# Orthweb deploy-time values (no secrets). Written by cloud-init; read by orthweb-fetch and orthweb-bootstrap."
    ]
    lines += [f"{k}='{val}'" for k, val in values.items()]
    return "\n".join(lines) + "\n"


class _Literal(str):
    """Multi-line text dumped as a YAML literal block, so the host's copy stays readable."""


yaml.SafeDumper.add_representer(
    _Literal, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|")
)


def render_user_data(v: HostValues, bundle: Bundle) -> str:
    """The complete #cloud-config document for the host."""
    skeleton: dict[str, Any] = yaml.safe_load((HERE / "cloud-config.yaml").read_text())
    files = {
        "site.env": site_env(v, bundle),
        "orthweb-fetch": (HERE / "orthweb-fetch.sh").read_text(),
        "orthweb-boot.service": (HERE / "orthweb-boot.service").read_text(),
    }
    for entry in skeleton["write_files"]:
        entry["content"] = _Literal(files[entry["content"]])
    return "#cloud-config\n" + str(yaml.safe_dump(skeleton, sort_keys=False, width=1000))
