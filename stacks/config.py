"""The one validated, immutable description of an Orthweb deployment.

Values come from the defaults below, then an optional ``orthweb.toml`` in the project root, then
environment variables named ``ORTHWEB_<FIELD>``. Every field is validated; all problems are
reported together, one line each, naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ENV_PREFIX = "ORTHWEB_"
# Variables with the same prefix that tune Orthweb's tools, not the deployment: never config fields.
TOOL_VARIABLES = frozenset(
    {
        "ORTHWEB_AWS_BINDING",
        "ORTHWEB_TF_MIRROR",
        "ORTHWEB_PG_BIN",
        "ORTHWEB_LOCALSITE_DIR",
        "ORTHWEB_AWS_ENDPOINT",
        "ORTHWEB_ETC",
        "ORTHWEB_RUN",
    }
)
RDS_CA_BUNDLE = Path(__file__).resolve().parent.parent / "userdata" / "rds-ca-bundle.pem"
CONFIG_FILE_NAME = "orthweb.toml"

ENVIRONMENTS = ("dev", "test", "prod")
TARGETS = ("aws", "emulator")
# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)
# Interface endpoints worth having for a host in a VPC without NAT; each costs ~$7/month per AZ.
INTERFACE_ENDPOINT_SERVICES = ("ssm", "ssmmessages", "ec2messages", "secretsmanager", "kms", "logs", "sts")
DICOM_RIGHTS = ("echo", "find", "move", "get", "store")

_NAME = re.compile(r"^[a-z][a-z0-9-]{1,18}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_DB_CLASS = re.compile(r"^db\.[a-z][a-z0-9-]*\.[a-z0-9]+$")
_AMI = re.compile(r"^ami-[0-9a-f]{8}([0-9a-f]{9})?$")
_SSH_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( \S.*)?$")
_TAG_KEY = re.compile(r"^[\w .:/=+@-]{1,128}$")
_AE_TITLE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_SITE_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_SECRET_NAME = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,512}$|^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:\S+$")
# An image reference pinned by an exact release tag, optionally also by digest. Never "latest".
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/-]*(:[0-9][A-Za-z0-9._-]*)(@sha256:[0-9a-f]{64})?$")


def rds_ca_regions() -> set[str]:
    """Regions whose RDS root CAs ship with Orthweb (the host verifies the database against them)."""
    return set(re.findall(r"^# Amazon RDS (\S+) Root CA ", RDS_CA_BUNDLE.read_text(), re.M))


class ConfigError(ValueError):
    """Raised with every validation problem found, one message per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class DicomModality:
    """A remote DICOM node allowed more than echo/store (e.g. a PACS that queries and retrieves)."""

    aet: str
    host: str
    port: int = 104
    rights: tuple[str, ...] = ("echo", "find", "move", "get", "store")


@dataclass(frozen=True)
class OrthwebConfig:
    """Every input of a deployment. Field comments are the README's input table (checked by a test)."""

    name: str = "orthweb"  # Name prefix of every resource; 3-20 chars, lowercase letters, digits, hyphens.
    environment: str = "dev"  # dev, test or prod; prod turns on deletion protection, final snapshot, Multi-AZ.
    region: str = "us-east-1"  # AWS region to deploy into.
    target: str = "aws"  # aws, or emulator (an AWS API emulator on loopback; never a real account).
    emulator_endpoint: str = ""  # URL of the emulator when target is emulator; loopback only.
    vpc_cidr: str = "172.17.0.0/16"  # VPC address range, /16 to /24; subnets are carved from it.
    az_count: int = 2  # Availability zones for public subnets, 1-3; the DB subnet group always spans 2+.
    interface_endpoints: tuple[str, ...] = ()  # Interface VPC endpoints to create (ssm, secretsmanager, ...).
    instance_type: str = "t3.medium"  # EC2 instance type of the Orthanc host (x86_64).
    ami_id: str = ""  # Pin the host AMI; empty resolves the latest Amazon Linux 2023 at plan time.
    root_volume_gb: int = 30  # Size of the host's encrypted gp3 root volume, 8-1024 GiB.
    ssh_public_key: str = ""  # Optional SSH public key; empty means no key pair (use SSM Session Manager).
    web_client_cidrs: tuple[str, ...] = ("0.0.0.0/0",)  # Networks allowed to reach HTTPS (443).
    dicom_client_cidrs: tuple[str, ...] = ("0.0.0.0/0",)  # Networks allowed to reach DICOM TLS (11112).
    db_instance_class: str = "db.t4g.small"  # RDS instance class.
    db_allocated_storage_gb: int = 20  # Initial RDS storage, 20-65536 GiB (grows automatically).
    db_max_allocated_storage_gb: int = 100  # Ceiling for RDS storage autoscaling.
    db_multi_az: bool | None = None  # RDS Multi-AZ; empty means on in prod, off elsewhere.
    db_backup_retention_days: int = 7  # RDS automated backup retention, 7-35 days.
    db_deletion_protection: bool = True  # Refuse to delete the database (turn off before destroying a dev site).
    noncurrent_version_expiration_days: int = 90  # Days before replaced/deleted DICOM object versions expire.
    intelligent_tiering: bool = False  # Move DICOM objects to S3 Intelligent-Tiering after 30 days.
    log_retention_days: int = 365  # CloudWatch retention for flow logs and container logs.
    cloudtrail: bool = False  # A CloudTrail trail with S3 data events for the DICOM bucket (~$0.10 per 100k calls).
    object_lock_days: int = 0  # S3 Object Lock (governance) default retention in days; 0 is off. Locks every version.
    backup_retention_days: int = 0  # Daily AWS Backup of the database kept this long; 0 is off (snapshot storage cost).
    unique_suffix: bool = False  # Append a random suffix to names (needs the random provider).
    tags: tuple[tuple[str, str], ...] = ()  # Extra tags on every resource, as key=value pairs.
    site_name: str = ""  # Optional DNS name of the site, added to the certificate's names.
    ae_title: str = "ORTHANC"  # Called AE title of the Orthanc server.
    tls_certificate_secret: str = ""  # Secrets Manager secret holding your own certificate; empty: self-signed.
    dicom_modalities: tuple[DicomModality, ...] = ()  # Modalities allowed find/get/move (aet, host, port, rights).
    container_logs: bool = True  # Ship container logs to the CloudWatch log group.
    orthanc_image: str = ""  # Orthanc image (name:tag[@sha256:digest]); empty uses the pinned default.
    nginx_image: str = ""  # nginx image (name:tag[@sha256:digest]); empty uses the pinned default.

    @property
    def is_prod(self) -> bool:
        return self.environment == "prod"

    @property
    def multi_az(self) -> bool:
        return self.is_prod if self.db_multi_az is None else self.db_multi_az

    @property
    def tag_map(self) -> dict[str, str]:
        return {"Application": "orthweb", "Name": self.name, "Environment": self.environment, **dict(self.tags)}

    def validate(self) -> OrthwebConfig:
        problems = list(_problems(self))
        if problems:
            raise ConfigError(problems)
        return self


def _allowed(name: str, value: Any, allowed: str) -> str:
    return f"{name}: {value!r} is not allowed; allowed: {allowed}"


def _cidr_problem(name: str, value: str) -> str | None:
    try:
        ipaddress.IPv4Network(value, strict=True)
    except ValueError:
        return _allowed(name, value, "an IPv4 network in CIDR form such as 10.0.0.0/16, host bits zero")
    return None


def _problems(c: OrthwebConfig):  # noqa: C901 - one flat list of rules reads best
    if not isinstance(c.name, str) or not _NAME.match(c.name):
        yield _allowed("name", c.name, "3-20 chars: lowercase letters, digits, hyphens; starts with a letter")
    if c.environment not in ENVIRONMENTS:
        yield _allowed("environment", c.environment, ", ".join(ENVIRONMENTS))
    if not _REGION.match(str(c.region)) or c.region not in rds_ca_regions():
        yield _allowed("region", c.region, "an AWS region with RDS (see userdata/rds-ca-bundle.pem), such as us-east-1")
    if c.target not in TARGETS:
        yield _allowed("target", c.target, ", ".join(TARGETS))
    yield from _emulator_problems(c)
    problem = _cidr_problem("vpc_cidr", c.vpc_cidr)
    if problem:
        yield problem
    elif not 16 <= ipaddress.IPv4Network(c.vpc_cidr).prefixlen <= 24:
        yield _allowed("vpc_cidr", c.vpc_cidr, "a prefix length from /16 to /24")
    yield from _int_range("az_count", c.az_count, 1, 3)
    for service in c.interface_endpoints:
        if service not in INTERFACE_ENDPOINT_SERVICES:
            yield _allowed("interface_endpoints", service, ", ".join(INTERFACE_ENDPOINT_SERVICES))
    if not _INSTANCE_TYPE.match(str(c.instance_type)):
        yield _allowed("instance_type", c.instance_type, "an EC2 instance type such as t3.medium")
    if c.ami_id and not _AMI.match(c.ami_id):
        yield _allowed("ami_id", c.ami_id, "empty, or an AMI id such as ami-0123456789abcdef0")
    yield from _int_range("root_volume_gb", c.root_volume_gb, 8, 1024)
    if c.ssh_public_key and not _SSH_KEY.match(c.ssh_public_key):
        yield _allowed("ssh_public_key", "<key text>", "empty, or an OpenSSH public key (ssh-ed25519, ssh-rsa, ecdsa)")
    for fname in ("web_client_cidrs", "dicom_client_cidrs"):
        for cidr in getattr(c, fname):
            problem = _cidr_problem(fname, cidr)
            if problem:
                yield problem
    if not _DB_CLASS.match(str(c.db_instance_class)):
        yield _allowed("db_instance_class", c.db_instance_class, "an RDS instance class such as db.t4g.small")
    yield from _int_range("db_allocated_storage_gb", c.db_allocated_storage_gb, 20, 65536)
    yield from _int_range("db_max_allocated_storage_gb", c.db_max_allocated_storage_gb, 20, 65536)
    if (
        isinstance(c.db_allocated_storage_gb, int)
        and isinstance(c.db_max_allocated_storage_gb, int)
        and c.db_max_allocated_storage_gb < c.db_allocated_storage_gb
    ):
        yield _allowed(
            "db_max_allocated_storage_gb",
            c.db_max_allocated_storage_gb,
            f"at least db_allocated_storage_gb ({c.db_allocated_storage_gb})",
        )
    if c.db_multi_az not in (None, True, False):
        yield _allowed("db_multi_az", c.db_multi_az, "true, false, or empty (on in prod)")
    yield from _int_range("db_backup_retention_days", c.db_backup_retention_days, 7, 35)
    yield from _int_range("object_lock_days", c.object_lock_days, 0, 36500)
    yield from _int_range("backup_retention_days", c.backup_retention_days, 0, 36500)
    yield from _int_range("noncurrent_version_expiration_days", c.noncurrent_version_expiration_days, 1, 3650)
    if c.log_retention_days not in LOG_RETENTION_DAYS:
        yield _allowed("log_retention_days", c.log_retention_days, ", ".join(map(str, LOG_RETENTION_DAYS)))
    for key, value in c.tags:
        if not _TAG_KEY.match(key) or key.lower().startswith("aws:") or len(value) > 256:
            yield _allowed("tags", f"{key}={value}", "key=value pairs; keys 1-128 chars, not starting with aws:")
    if c.site_name and not _SITE_NAME.match(c.site_name):
        yield _allowed("site_name", c.site_name, "empty, or a lowercase DNS name such as pacs.example.org")
    if not _AE_TITLE.match(str(c.ae_title)):
        yield _allowed("ae_title", c.ae_title, "1-16 chars: letters, digits, _ or -")
    if c.tls_certificate_secret and not _SECRET_NAME.match(c.tls_certificate_secret):
        yield _allowed("tls_certificate_secret", c.tls_certificate_secret, "empty, or a Secrets Manager name or ARN")
    for m in c.dicom_modalities:
        if not _AE_TITLE.match(m.aet):
            yield _allowed("dicom_modalities.aet", m.aet, "1-16 chars: letters, digits, _ or -")
        if not re.match(r"^[A-Za-z0-9.:-]{1,253}$", m.host):
            yield _allowed("dicom_modalities.host", m.host, "a host name or IP address")
        yield from _int_range("dicom_modalities.port", m.port, 1, 65535)
        for right in m.rights:
            if right not in DICOM_RIGHTS:
                yield _allowed("dicom_modalities.rights", right, ", ".join(DICOM_RIGHTS))
    for fname in ("orthanc_image", "nginx_image"):
        value = getattr(c, fname)
        if value and not _IMAGE.match(value):
            yield _allowed(
                fname,
                value,
                "empty, or name:tag with an exact release tag (not latest), optionally @sha256:<64 hex digits>",
            )


def _emulator_problems(c: OrthwebConfig):
    if c.target == "emulator":
        url = urlparse(c.emulator_endpoint)
        host = url.hostname or ""
        loopback = host == "localhost"
        try:
            loopback = loopback or ipaddress.ip_address(host).is_loopback
        except ValueError:
            pass
        if url.scheme not in ("http", "https") or not loopback or not url.port:
            yield _allowed(
                "emulator_endpoint",
                c.emulator_endpoint,
                "http://127.0.0.1:PORT, http://localhost:PORT or http://[::1]:PORT (loopback only)",
            )
    elif c.emulator_endpoint:
        yield _allowed("emulator_endpoint", c.emulator_endpoint, "empty unless target is emulator")


def _int_range(name: str, value: Any, low: int, high: int):
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        yield _allowed(name, value, f"a whole number from {low} to {high}")


# ---------------------------------------------------------------------------------------------
# Loading: defaults < orthweb.toml < ORTHWEB_* environment variables.


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(OrthwebConfig)}


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    return int(value)


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _to_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else _BOOL_WORDS[str(value).strip().lower()]


def _to_optional_bool(value: Any) -> bool | None:
    return None if isinstance(value, str) and not value.strip() else _to_bool(value)


def _to_strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError


def _to_pairs(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, dict):
        return tuple((str(k), str(v)) for k, v in value.items())
    if not isinstance(value, str):
        raise ValueError
    pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
    if any(len(p) != 2 for p in pairs):
        raise ValueError
    return tuple((k.strip(), v.strip()) for k, v in pairs)


def _to_modalities(value: Any) -> tuple[DicomModality, ...]:
    items = json.loads(value) if isinstance(value, str) else value
    return tuple(
        DicomModality(
            aet=str(i["aet"]),
            host=str(i["host"]),
            port=int(i.get("port", 104)),
            rights=tuple(i.get("rights", DicomModality.rights)),
        )
        for i in items
    )


def _to_text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise ValueError
    return str(value)


_CONVERTERS = {
    "int": _to_int,
    "bool": _to_bool,
    "bool | None": _to_optional_bool,
    "tuple[str, ...]": _to_strings,
    "tuple[tuple[str, str], ...]": _to_pairs,
    "tuple[DicomModality, ...]": _to_modalities,
    "str": _to_text,
}


def _coerce(name: str, value: Any, problems: list[str]) -> Any:
    """Turn a TOML or environment value into the field's type; record a problem if impossible."""
    kind = _field_types()[name]
    try:
        return _CONVERTERS[kind](value)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        problems.append(_allowed(name, value, _EXPECTED[kind]))
        return dataclasses.MISSING


_EXPECTED = {
    "int": "a whole number",
    "bool": "true or false",
    "bool | None": "true, false, or empty",
    "tuple[str, ...]": "a comma-separated list (or a TOML list)",
    "tuple[tuple[str, str], ...]": "key=value pairs separated by commas (or a TOML table)",
    "tuple[DicomModality, ...]": 'a JSON list of {"aet", "host", "port", "rights"} objects (or TOML tables)',
    "str": "text",
}


def load_config(root: Path, environ: Mapping[str, str]) -> OrthwebConfig:
    """Build and validate the config from ``root/orthweb.toml`` (optional) and ``environ``."""
    known = _field_types()
    problems: list[str] = []
    values: dict[str, Any] = {}
    path = root / CONFIG_FILE_NAME
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{CONFIG_FILE_NAME}: not valid TOML ({exc})"]) from None
        for key, value in data.items():
            if key not in known:
                problems.append(_allowed(f"{CONFIG_FILE_NAME}: {key}", key, "the fields listed in README"))
            else:
                values[key] = _coerce(key, value, problems)
    for env_name, value in environ.items():
        if not env_name.startswith(ENV_PREFIX) or env_name in TOOL_VARIABLES:
            continue
        key = env_name[len(ENV_PREFIX) :].lower()
        if key not in known:
            problems.append(_allowed(env_name, "set", "ORTHWEB_<FIELD> for the fields listed in README"))
        else:
            values[key] = _coerce(key, value, problems)
    if problems:
        raise ConfigError(problems)
    return OrthwebConfig(**values).validate()
