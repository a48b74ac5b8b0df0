"""The host's cloud-init user data, rendered at synth time from the files in this folder and docker/.

Deploy-time values (ARNs, endpoints, names) may be CDKTF tokens; they stay tokens in the text and
become Terraform interpolations (see modules/hcl.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from config import rds_ca
from config.facts import APP_DB_USER, DEFAULT_AE_TITLE, NGINX_IMAGE, ORTHANC_IMAGE
from config.inputs import DicomModality
from userdata.site import (
    ComposeValues,
    NginxValues,
    OrthancValues,
    render_compose,
    render_nginx,
    render_orthanc,
)

HERE = Path(__file__).resolve().parent
# EC2 refuses user data over 16 KB (after compression, before base64).
USER_DATA_LIMIT = 16 * 1024
_SAFE_ENV_VALUE = re.compile(r"^[^'\n\\]*$")


@dataclass(frozen=True)
class HostValues:
    """Everything the host needs to know at boot that is not a secret."""

    region: str
    bucket: str
    admin_secret_arn: str
    tls_secret_arn: str
    db_secret_arn: str
    db_host: str
    db_port: str
    db_name: str
    site_dns: str
    site_ip: str
    log_group: str
    ae_title: str = DEFAULT_AE_TITLE
    site_name: str = ""
    byo_tls_secret: str = ""
    modalities: tuple[DicomModality, ...] = ()
    orthanc_image: str = ORTHANC_IMAGE
    nginx_image: str = NGINX_IMAGE
    container_logs: bool = True
    # The region as plain text (``region`` may be a token): selects the RDS CA certificates.
    region_name: str = "us-east-1"


def site_env(v: HostValues) -> str:
    values = {
        "REGION": v.region,
        "BUCKET": v.bucket,
        "ADMIN_SECRET_ARN": v.admin_secret_arn,
        "TLS_SECRET_ARN": v.tls_secret_arn,
        "DB_SECRET_ARN": v.db_secret_arn,
        "DB_HOST": v.db_host,
        "DB_PORT": v.db_port,
        "DB_NAME": v.db_name,
        "APP_DB_USER": APP_DB_USER,
        "SITE_DNS": v.site_dns,
        "SITE_IP": v.site_ip,
        "SITE_NAME": v.site_name,
        "BYO_TLS_SECRET": v.byo_tls_secret,
    }
    for key, value in values.items():
        if not _SAFE_ENV_VALUE.match(value):
            raise ValueError(f"{key}: value cannot be written to site.env safely")
    lines = ["# Orthweb deploy-time values (no secrets). Written by cloud-init; read by orthweb-bootstrap."]
    lines += [f"{k}='{val}'" for k, val in values.items()]
    return "\n".join(lines) + "\n"


def host_files(v: HostValues) -> dict[str, str]:
    """Every file the cloud-config writes, by the name it uses in cloud-config.yaml."""
    compose = ComposeValues(
        log_group=v.log_group if v.container_logs else "",
        region=v.region,
        orthanc_image=v.orthanc_image,
        nginx_image=v.nginx_image,
    )
    return {
        "site.env": site_env(v),
        "docker-compose.yml": render_compose(compose),
        "nginx.conf": render_nginx(NginxValues()),
        "orthanc.json": render_orthanc(
            OrthancValues(ae_title=v.ae_title, bucket=v.bucket, region=v.region, modalities=v.modalities)
        ),
        "rds-ca.pem": rds_ca.pem_for(v.region_name),
        "bootstrap.sh": (HERE / "bootstrap.sh").read_text(),
        **{
            name: (HERE / name).read_text()
            for name in ("orthweb.service", "orthweb-refresh.service", "orthweb-refresh.timer")
        },
    }


class _Literal(str):
    """Multi-line text dumped as a YAML literal block, so the host's copy stays readable."""


yaml.SafeDumper.add_representer(
    _Literal, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|")
)


def render_user_data(v: HostValues) -> str:
    """The complete #cloud-config document for the host."""
    skeleton = yaml.safe_load((HERE / "cloud-config.yaml").read_text())
    files = host_files(v)
    for entry in skeleton["write_files"]:
        entry["content"] = _Literal(files[entry["content"]])
    return "#cloud-config\n" + str(yaml.safe_dump(skeleton, sort_keys=False, width=1000))
