"""The one validated, immutable description of an Orthweb deployment: every input declared once.

Each field of ``OrthwebConfig`` is one ``setting(...)``: its type (the annotation), its default,
its description and its single-field checks, together, the way a Terraform ``variable`` block
holds type, default, description and validation. The inputs table (docs/inputs.md) is generated from this
metadata (``python -m tools.maint.docs``); rules that involve several fields live in one function,
``cross_field_problems``.

Values come from the defaults, then an optional ``orthweb.toml`` in the project root, then
environment variables named ``ORTHWEB_<FIELD>``. Every problem is reported together, one line
each, naming the field, the value and what is allowed.

Why not pydantic-settings: its environment source silently ignores unknown ``ORTHWEB_*`` names (a
typo would be lost), reads ``os.environ`` on every construction (tests and the stack build configs
directly), raises a parse error instead of a validation message for comma-separated lists, and its
messages ("Input should be less than or equal to 3", with the raw input) would need a mapping per
error type to keep ours; it would also add a compiled dependency to a synth-only tool.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlparse

from config import facts, rds_ca, regions

ENV_PREFIX = "ORTHWEB_"
CONFIG_FILE_NAME = "orthweb.toml"
# Variables with the same prefix that tune Orthweb's tools, not the deployment: never config fields.
TOOL_VARIABLES = frozenset(
    {
        "ORTHWEB_TF_MIRROR",
        "ORTHWEB_PG_BIN",
        "ORTHWEB_LOCALSITE_DIR",
        "ORTHWEB_AWS_ENDPOINT",
        "ORTHWEB_ETC",
        "ORTHWEB_RUN",
    }
)

ENVIRONMENTS = ("dev", "test", "prod")
TARGETS = ("aws", "emulator")
# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (
    *(1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365),
    *(400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653),
)
# Six years: HIPAA's retention of required documentation (45 CFR 164.316(b)(2)(i)); prod keeps its
# logs (audit trail, sessions, connections) at least this long.
AUDIT_RETENTION_DAYS = 2192
DEFAULT_RETENTION_DAYS = 365
# Interface endpoints worth having for a host in a VPC without NAT; each costs ~$7/month per AZ.
INTERFACE_ENDPOINT_SERVICES = ("ssm", "ssmmessages", "ec2messages", "secretsmanager", "kms", "logs", "sts")
DICOM_RIGHTS = ("echo", "find", "move", "get", "store")
# C-MOVE makes Orthanc open a connection to the modality, so "move" is granted only when asked for
# (the host then opens egress to the modality's address and port).
DEFAULT_MODALITY_RIGHTS = ("echo", "find", "get", "store")
DICOM_CLIENT_AUTH = ("none", "certificate")
WORLD = "0.0.0.0/0"
# In prod, a client allow-list may cover at most this many public IPv4 addresses (a /8: a large
# hospital group or a national research network, never the Internet) unless the port has a control
# of its own: DICOM client certificates on the DICOM port. The web port has none yet (one shared
# admin login), so prod holds it to the bound. Counted on what the list covers, not how it is
# written: 0.0.0.0/1 + 128.0.0.0/1 is the whole Internet too.
PUBLIC_ADDRESS_BOUND = 2**24
_NOT_PUBLIC = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/3",
    )
)


def public_addresses(cidrs: Iterable[str]) -> int:
    """How many public IPv4 addresses a list of networks covers together (overlaps counted once;
    private, shared, loopback, link-local, documentation, multicast and reserved space not at all)."""
    networks = list(ipaddress.collapse_addresses(ipaddress.IPv4Network(c) for c in cidrs))
    total = sum(n.num_addresses for n in networks)
    for n in networks:
        for other in _NOT_PUBLIC:  # two CIDR blocks either nest or do not meet
            if n.subnet_of(other):
                total -= n.num_addresses
            elif other.subnet_of(n):
                total -= other.num_addresses
    return total


# No "--" (RDS identifiers and trail names refuse it) and no prefix S3 reserves for bucket names.
_NAME = re.compile(r"^(?!.*--)(?!sthree-|amzn-s3-demo-)[a-z][a-z0-9-]{1,18}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_DB_CLASS = re.compile(r"^db\.[a-z][a-z0-9-]*\.[a-z0-9]+$")
_AMI = re.compile(r"^ami-[0-9a-f]{8}([0-9a-f]{9})?$")
_SSH_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( \S.*)?$")
_TAG_KEY = re.compile(r"^[\w .:/=+@-]{1,128}$")
_AE_TITLE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_HOST = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")
_EMAIL = re.compile(r"^[^@\s'\\]{1,64}@[a-z0-9.-]+\.[a-z]{2,63}$", re.I)
_SITE_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_SECRET_NAME = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,512}$|^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:\S+$")
# An image reference pinned by an exact release tag, optionally also by digest. Never "latest".
_BUCKET = re.compile(r"^(?!xn--)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key/[0-9a-f-]{36}|alias/[A-Za-z0-9/_-]{1,250})$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/-]*(:[0-9][A-Za-z0-9._-]*)(@sha256:[0-9a-f]{64})?$")

# A check takes the field's name and value and yields one message per problem.
Check = Callable[[str, Any], Iterator[str]]


class ConfigError(ValueError):
    """Raised with every validation problem found, one message per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def allowed(name: str, value: Any, what: str) -> str:
    """The one message form: the field, the value and what is allowed."""
    return f"{name}: {value!r} is not allowed; allowed: {what}"


# -- single-field checks ---------------------------------------------------------------------------


def one_of(choices: tuple[Any, ...], what: str | None = None) -> Check:
    def check(name: str, value: Any) -> Iterator[str]:
        if value not in choices:
            yield allowed(name, value, what or ", ".join(map(str, choices)))

    return check


def whole_number(low: int, high: int) -> Check:
    def check(name: str, value: Any) -> Iterator[str]:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            yield allowed(name, value, f"a whole number from {low} to {high}")

    return check


def matching(pattern: re.Pattern[str], what: str, *, optional: bool = False, shown: str | None = None) -> Check:
    """The value matches ``pattern`` (or is empty, if ``optional``); ``shown`` hides the value in messages."""

    def check(name: str, value: Any) -> Iterator[str]:
        if optional and value == "":
            return
        if not isinstance(value, str) or not pattern.match(value):
            yield allowed(name, value if shown is None else shown, what)

    return check


def cidr(name: str, value: Any) -> Iterator[str]:
    try:
        ipaddress.IPv4Network(value, strict=True)
    except (ValueError, TypeError):
        yield allowed(name, value, "an IPv4 network in CIDR form such as 10.0.0.0/16, host bits zero")


def each(check: Check) -> Check:
    """Apply ``check`` to every element of a tuple field."""

    def check_all(name: str, values: Any) -> Iterator[str]:
        for value in values:
            yield from check(name, value)

    return check_all


def _region(name: str, value: Any) -> Iterator[str]:
    if not _REGION.match(str(value)) or value not in rds_ca.regions():
        yield allowed(name, value, f"an AWS region with RDS (see config/{rds_ca.BUNDLE.name}), such as us-east-1")


REPLICA_OFF = "none"


def _replica_region(name: str, value: Any) -> Iterator[str]:
    if value not in ("", REPLICA_OFF) and value not in rds_ca.regions():
        yield allowed(name, value, f"empty (on in prod), {REPLICA_OFF}, or an AWS region with RDS such as us-west-2")


def _vpc_cidr(name: str, value: Any) -> Iterator[str]:
    problems = list(cidr(name, value))
    if problems:
        yield from problems
    elif not 16 <= ipaddress.IPv4Network(value).prefixlen <= 24:
        yield allowed(name, value, "a prefix length from /16 to /24")


def _tags(name: str, pairs: Any) -> Iterator[str]:
    for key, value in pairs:
        if not _TAG_KEY.match(key) or key.lower().startswith("aws:") or len(value) > 256:
            yield allowed(name, f"{key}={value}", "key=value pairs; keys 1-128 chars, not starting with aws:")


def _modalities(name: str, modalities: Any) -> Iterator[str]:
    ae_title = matching(_AE_TITLE, "1-16 chars: letters, digits, _ or -")
    for m in modalities:
        yield from ae_title(f"{name}.aet", m.aet)
        yield from matching(_HOST, "a host name or IP address")(f"{name}.host", m.host)
        yield from whole_number(1, 65535)(f"{name}.port", m.port)
        yield from each(one_of(DICOM_RIGHTS))(f"{name}.rights", m.rights)
        if "move" in m.rights and not _is_ipv4(m.host):
            yield allowed(f"{name}.host", m.host, "an IPv4 address when rights include move (egress is opened to it)")


def _pem_certificates(name: str, value: Any) -> Iterator[str]:
    """Empty, or a readable file holding at least one PEM certificate (and no private key)."""
    if value == "":
        return
    try:
        text = Path(value).read_text()
    except (OSError, UnicodeDecodeError, TypeError, ValueError):
        yield allowed(name, value, "empty, or a readable PEM file of CA certificates")
        return
    if "-----BEGIN CERTIFICATE-----" not in text or "PRIVATE KEY-----" in text:
        yield allowed(name, value, "empty, or a PEM file of CA certificates only (no private key)")


def _is_public_ipv4(value: str) -> bool:
    return _is_ipv4(value) and public_addresses([f"{value}/32"]) == 1


def _is_ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


_IMAGE_RULE = "empty, or name:tag with an exact release tag (not latest), optionally @sha256:<64 hex digits>"


def setting(default: Any, description: str, *checks: Check, empty_means_default: bool = False) -> Any:
    """One input: default, description (the words of docs/inputs.md) and its single-field checks."""
    metadata = {"description": description, "checks": checks, "empty_means_default": empty_means_default}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class DicomModality:
    """A remote DICOM node allowed more than echo/store (e.g. a PACS that queries and retrieves)."""

    aet: str
    host: str
    port: int = 104
    rights: tuple[str, ...] = DEFAULT_MODALITY_RIGHTS
    # Orthanc reaches it over DICOM TLS (C-MOVE and C-STORE from the site), checking its certificate
    # against modality_ca_file and presenting one from the site CA.
    tls: bool = False


@dataclass(frozen=True)
class OrthwebConfig:
    """Every input of a deployment (docs/inputs.md's table is generated from these settings)."""

    name: str = setting(
        "orthweb",
        "Name prefix of every resource; 3-20 chars, lowercase letters, digits, single hyphens (at most 19 with"
        " hosts >= 2 and unique_suffix: target group names).",
        matching(
            _NAME,
            "3-20 chars: lowercase letters, digits, single hyphens; starts with a letter; not sthree- or "
            "amzn-s3-demo- (S3 reserves them)",
        ),
    )
    environment: str = setting(
        "dev",
        "dev, test or prod; prod turns on deletion protection, final snapshot, Multi-AZ, the trail, 6-year logs.",
        one_of(ENVIRONMENTS),
    )
    region: str = setting("us-east-1", "AWS region to deploy into.", _region)
    replica_region: str = setting(
        "",
        "Region of the DICOM bucket's replica (own key; deletions not replicated). Empty: off outside prod; in prod"
        " the region's partner under the same law (config/regions.py: us-east-1 -> us-west-2, eu-west-1 ->"
        " eu-central-1; a region without one, such as eu-west-2, must name one). none: off. Not region itself.",
        _replica_region,
    )
    target: str = setting(
        "aws", "aws, or emulator (an AWS API emulator on loopback; never a real account).", one_of(TARGETS)
    )
    emulator_endpoint: str = setting("", "URL of the emulator when target is emulator; loopback only.")
    vpc_cidr: str = setting("172.17.0.0/16", "VPC address range, /16 to /24; subnets are carved from it.", _vpc_cidr)
    az_count: int = setting(
        2,
        "Availability zones for public subnets, 1-3; the DB subnet group always spans 2+.",
        whole_number(1, 3),
    )
    interface_endpoints: tuple[str, ...] = setting(
        (),
        "Interface VPC endpoints to create (ssm, secretsmanager, ...).",
        each(one_of(INTERFACE_ENDPOINT_SERVICES)),
    )
    hosts: int = setting(
        1,
        "Orthanc hosts: 1 = one host behind its Elastic IP (EC2 recovers it); 2-10 = an Auto Scaling group"
        " behind a Network Load Balancer.",
        whole_number(1, 10),
    )
    hosts_max: int = setting(
        0, "Most hosts the Auto Scaling group may run (0 = hosts); it never runs fewer than hosts.", whole_number(0, 20)
    )
    alarm_email: str = setting(
        "",
        "Email subscribed to the alarm topic (SNS, encrypted; it must confirm); empty: subscribe anything later.",
        matching(_EMAIL, "empty, or an email address", optional=True),
    )
    instance_type: str = setting(
        "t3.medium",
        "EC2 instance type of the Orthanc host(s) (x86_64).",
        matching(_INSTANCE_TYPE, "an EC2 instance type such as t3.medium"),
    )
    ami_id: str = setting(
        "",
        "Pin the host AMI; empty resolves the latest Amazon Linux 2023 at plan time.",
        matching(_AMI, "empty, or an AMI id such as ami-0123456789abcdef0", optional=True),
    )
    root_volume_gb: int = setting(
        30, "Size of the host's encrypted gp3 root volume, 8-1024 GiB.", whole_number(8, 1024)
    )
    ssh_public_key: str = setting(
        "",
        "Optional SSH public key; empty means no key pair (use SSM Session Manager).",
        matching(
            _SSH_KEY,
            "empty, or an OpenSSH public key (ssh-ed25519, ssh-rsa, ecdsa)",
            optional=True,
            shown="<key text>",
        ),
    )
    web_client_cidrs: tuple[str, ...] = setting(
        (WORLD,), f"Networks allowed to reach HTTPS ({facts.HTTPS_PORT}).", each(cidr)
    )
    dicom_client_cidrs: tuple[str, ...] = setting(
        (WORLD,), f"Networks allowed to reach DICOM TLS ({facts.DICOM_TLS_PORT}).", each(cidr)
    )
    dicom_client_auth: str = setting(
        "none",
        "none, or certificate: DICOM clients must present a certificate issued by `make modality-cert`.",
        one_of(DICOM_CLIENT_AUTH),
    )
    db_instance_class: str = setting(
        "db.t4g.small",
        "RDS instance class.",
        matching(_DB_CLASS, "an RDS instance class such as db.t4g.small"),
    )
    db_allocated_storage_gb: int = setting(
        20, "Initial RDS storage, 20-65536 GiB (grows automatically).", whole_number(20, 65536)
    )
    db_max_allocated_storage_gb: int = setting(100, "Ceiling for RDS storage autoscaling.", whole_number(20, 65536))
    db_multi_az: bool | None = setting(
        None,
        "RDS Multi-AZ; empty means on in prod, off elsewhere.",
        one_of((None, True, False), "true, false, or empty (on in prod)"),
    )
    db_backup_retention_days: int = setting(7, "RDS automated backup retention, 7-35 days.", whole_number(7, 35))
    db_deletion_protection: bool = setting(
        True, "Refuse to delete the database and the scaled profile's load balancer (off before destroying a site)."
    )
    break_glass_role_arns: tuple[str, ...] = setting(
        (),
        "IAM roles that may read and write DICOM objects besides Orthanc (and replication): emergencies,"
        " make recover. Everyone else is refused by the bucket and key policies, whatever IAM allows.",
        each(matching(_ROLE_ARN, "an IAM role ARN such as arn:aws:iam::123456789012:role/pacs-break-glass")),
    )
    allow_data_destroy: bool = setting(
        False,
        "Let destroy delete the buckets with every object version, the secrets at once, the DB without final snapshot.",
    )
    noncurrent_version_expiration_days: int = setting(
        90, "Days before replaced/deleted DICOM object versions expire.", whole_number(1, 3650)
    )
    intelligent_tiering: bool = setting(False, "Move DICOM objects to S3 Intelligent-Tiering after 30 days.")
    log_retention_days: int | None = setting(
        None,
        "Retention of every log group and of the log bucket's files; empty: 2192 days (6 years, HIPAA) in"
        " prod, 365 elsewhere; prod refuses less than 2192.",
        one_of((None, *LOG_RETENTION_DAYS), "empty, or " + ", ".join(map(str, LOG_RETENTION_DAYS))),
    )
    session_preferences: bool | None = setting(
        None,
        "Own the account's Session Manager preferences in the region (document SSM-SessionManagerRunShell):"
        " a session started without --document-name is logged and encrypted like the site's; one stack per"
        " account and region (apply fails if the document exists: import it or set false); empty: on in prod.",
        one_of((None, True, False), "true, false, or empty (on in prod)"),
    )
    cloudtrail: bool | None = setting(
        None,
        "A CloudTrail trail with S3 data events for the DICOM bucket (~$0.10 per 100k calls); empty: on in prod.",
        one_of((None, True, False), "true, false, or empty (on in prod)"),
    )
    object_lock_days: int = setting(
        0,
        "S3 Object Lock (governance) default retention in days; 0 is off. Locks every version.",
        whole_number(0, 36500),
    )
    backup_retention_days: int = setting(
        0,
        "Daily AWS Backup of the database kept this long; 0 is off (snapshot storage cost).",
        whole_number(0, 36500),
    )
    unique_suffix: bool = setting(False, "Append a random suffix to names (needs the random provider).")
    tags: tuple[tuple[str, str], ...] = setting((), "Extra tags on every resource, as key=value pairs.", _tags)
    site_name: str = setting(
        "",
        "Optional DNS name of the site, added to the certificate's names (the front door answers only its names).",
        matching(_SITE_NAME, "empty, or a lowercase DNS name such as pacs.example.org", optional=True),
    )
    ae_title: str = setting(
        facts.DEFAULT_AE_TITLE,
        "Called AE title of the Orthanc server.",
        matching(_AE_TITLE, "1-16 chars: letters, digits, _ or -"),
    )
    tls_certificate_secret: str = setting(
        "",
        "Secrets Manager secret holding your own certificate; empty: self-signed.",
        matching(_SECRET_NAME, "empty, or a Secrets Manager name or ARN", optional=True),
    )
    dicom_modalities: tuple[DicomModality, ...] = setting(
        (),
        "Modalities allowed find/get/move (aet, host, port, rights, tls: reached over DICOM TLS; prod refuses"
        " move to a public address without it).",
        _modalities,
    )
    modality_ca_file: str = setting(
        "",
        "PEM file of the CA certificate(s) that sign the certificates of the modalities with tls; required with"
        " them. Its certificates go into the boot bundle.",
        _pem_certificates,
    )
    container_logs: bool = setting(True, "Ship container logs to the CloudWatch log group.")
    state_bucket: str = setting(
        "",
        "S3 bucket for Terraform state (and its lock file); empty: a local state file. Create it: make state-bucket.",
        matching(_BUCKET, "empty, or an S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)", optional=True),
    )
    state_kms_key: str = setting(
        "",
        "ARN of the KMS key that encrypts the state (make state-bucket prints it); required with state_bucket.",
        matching(_KMS_KEY_ARN, "empty, or a KMS key or alias ARN", optional=True),
    )
    orthanc_image: str = setting(
        facts.ORTHANC_IMAGE,
        "Orthanc image (name:tag[@sha256:digest]); empty means this default.",
        matching(_IMAGE, _IMAGE_RULE, optional=True),
        empty_means_default=True,
    )
    nginx_image: str = setting(
        facts.NGINX_IMAGE,
        "nginx image (name:tag[@sha256:digest]); empty means this default.",
        matching(_IMAGE, _IMAGE_RULE, optional=True),
        empty_means_default=True,
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.metadata["empty_means_default"] and getattr(self, f.name) == "":
                object.__setattr__(self, f.name, f.default)

    @property
    def is_prod(self) -> bool:
        return self.environment == "prod"

    @property
    def scaled(self) -> bool:
        """Several hosts behind a load balancer (the scaled profile)."""
        return self.hosts > 1

    @property
    def multi_az(self) -> bool:
        return self.is_prod if self.db_multi_az is None else self.db_multi_az

    @property
    def retention_days(self) -> int:
        """How long the logs are kept (``log_retention_days``'s rule)."""
        if self.log_retention_days is not None:
            return self.log_retention_days
        return AUDIT_RETENTION_DAYS if self.is_prod else DEFAULT_RETENTION_DAYS

    @property
    def modality_ca(self) -> str:
        """The text of ``modality_ca_file`` (empty when none): it goes into the boot bundle."""
        return Path(self.modality_ca_file).read_text() if self.modality_ca_file else ""

    @property
    def owns_session_preferences(self) -> bool:
        """Whether the stack manages the Session Manager preferences (``session_preferences``'s rule)."""
        return self.is_prod if self.session_preferences is None else self.session_preferences

    @property
    def audit_trail(self) -> bool:
        """Whether the stack has its CloudTrail trail (``cloudtrail``'s rule)."""
        return self.is_prod if self.cloudtrail is None else self.cloudtrail

    @property
    def replication(self) -> str | None:
        """The region the DICOM objects are replicated to, or None (``replica_region``'s rule)."""
        if self.replica_region == REPLICA_OFF:
            return None
        if self.replica_region:
            return self.replica_region
        return regions.default_replica_region(self.region) if self.is_prod else None

    @property
    def tag_map(self) -> dict[str, str]:
        return {"Application": "orthweb", "Name": self.name, "Environment": self.environment, **dict(self.tags)}

    def validate(self) -> OrthwebConfig:
        problems = [
            p for f in fields(self) for check in f.metadata["checks"] for p in check(f.name, getattr(self, f.name))
        ]
        problems += cross_field_problems(self)
        if problems:
            raise ConfigError(problems)
        return self


def field_problems(field: str, value: Any, shown: str | None = None) -> list[str]:
    """One input's own rules applied to ``value``; messages name ``shown`` (a command's option) or the field."""
    checks = next(f.metadata["checks"] for f in fields(OrthwebConfig) if f.name == field)
    return [problem for check in checks for problem in check(shown or field, value)]


def _name_length_problems(c: OrthwebConfig) -> list[str]:
    """The longest name built from ``name`` must fit AWS's limit; checked here because the random
    suffix is unknown until apply (a plan would pass and the apply fail)."""
    if not (isinstance(c.hosts, int) and c.hosts >= 2 and isinstance(c.name, str)):
        return []
    suffix = 1 + 2 * facts.NAME_SUFFIX_BYTES if c.unique_suffix else 0
    room = facts.TARGET_GROUP_NAME_LIMIT - suffix - 1 - max(len(label) for label in facts.TARGET_GROUP_LABELS)
    random_part = f"-<{suffix - 1} random hex>" if suffix else ""
    if len(c.name) > room:
        return [
            allowed(
                "name",
                c.name,
                f"at most {room} characters with hosts >= 2{' and unique_suffix' if suffix else ''}: the load "
                f"balancer's target group names (<name>{random_part}-dicom) may have at most "
                f"{facts.TARGET_GROUP_NAME_LIMIT}",
            )
        ]
    return []


def _prod_retention_problems(c: OrthwebConfig) -> list[str]:
    """Prod keeps its data from a destroy and its logs six years."""
    if not c.is_prod:
        return []
    problems = []
    if c.allow_data_destroy is True:
        problems.append(
            allowed(
                "allow_data_destroy",
                c.allow_data_destroy,
                "false in prod (set environment to test to destroy a site with its data; docs/production.md)",
            )
        )
    if isinstance(c.log_retention_days, int) and c.log_retention_days < AUDIT_RETENTION_DAYS:
        longer = ", ".join(str(d) for d in LOG_RETENTION_DAYS if d >= AUDIT_RETENTION_DAYS)
        problems.append(
            allowed(
                "log_retention_days",
                c.log_retention_days,
                f"in prod, empty or at least {AUDIT_RETENTION_DAYS} (6 years, HIPAA documentation retention): {longer}",
            )
        )
    return problems


def _prod_client_problems(c: OrthwebConfig) -> list[str]:
    """Prod: the client allow-lists by what they cover (PUBLIC_ADDRESS_BOUND)."""
    if not c.is_prod:
        return []
    problems = []
    bound = f"at most {PUBLIC_ADDRESS_BOUND:,} public addresses (a /8) together"
    try:
        dicom, web = public_addresses(c.dicom_client_cidrs), public_addresses(c.web_client_cidrs)
    except (ValueError, TypeError):
        return []  # a malformed network is reported by its own check
    if dicom > PUBLIC_ADDRESS_BOUND and c.dicom_client_auth != "certificate":
        problems.append(
            allowed(
                "dicom_client_cidrs",
                ",".join(c.dicom_client_cidrs),
                f"in prod, your modalities' networks, {bound} (this list covers {dicom:,}); or any networks "
                'with dicom_client_auth = "certificate"',
            )
        )
    if web > PUBLIC_ADDRESS_BOUND:
        problems.append(
            allowed(
                "web_client_cidrs",
                ",".join(c.web_client_cidrs),
                f"in prod, your users' networks, {bound} (this list covers {web:,}); the web port has no "
                "second control (one shared admin login)",
            )
        )
    return problems


def _modality_tls_problems(c: OrthwebConfig) -> list[str]:
    """DICOM TLS to modalities needs their CA; prod sends no images in clear over the Internet."""
    problems = []
    if any(m.tls for m in c.dicom_modalities) and not c.modality_ca_file:
        problems.append(
            allowed("modality_ca_file", "", "the PEM file of your modalities' CA when a modality has tls = true")
        )
    if c.is_prod:
        for m in c.dicom_modalities:
            if "move" in m.rights and not m.tls and _is_public_ipv4(m.host):
                problems.append(
                    allowed(
                        "dicom_modalities.tls",
                        False,
                        f"true for {m.aet} in prod: a C-MOVE to the public address {m.host} would carry the images"
                        " in clear over the Internet (or a private address reached over your VPN)",
                    )
                )
    return problems


def cross_field_problems(c: OrthwebConfig) -> list[str]:
    """Rules that involve more than one field."""
    problems = []
    if c.target == "emulator":
        url = urlparse(c.emulator_endpoint)
        host = url.hostname or ""
        loopback = host == "localhost"
        try:
            loopback = loopback or ipaddress.ip_address(host).is_loopback
        except ValueError:
            pass
        if url.scheme not in ("http", "https") or not loopback or not url.port:
            problems.append(
                allowed(
                    "emulator_endpoint",
                    c.emulator_endpoint,
                    "http://127.0.0.1:PORT, http://localhost:PORT or http://[::1]:PORT (loopback only)",
                )
            )
    elif c.emulator_endpoint:
        problems.append(allowed("emulator_endpoint", c.emulator_endpoint, "empty unless target is emulator"))
    problems += _prod_client_problems(c)
    problems += _prod_retention_problems(c)
    problems += _modality_tls_problems(c)
    if bool(c.state_bucket) != bool(c.state_kms_key):
        problems.append(
            allowed(
                "state_kms_key" if c.state_bucket else "state_bucket",
                c.state_kms_key or c.state_bucket,
                "state_bucket and state_kms_key together (both printed by make state-bucket), or neither",
            )
        )
    problems += _name_length_problems(c)
    if isinstance(c.hosts, int) and isinstance(c.hosts_max, int) and 0 < c.hosts_max < c.hosts:
        problems.append(allowed("hosts_max", c.hosts_max, f"0 (as many as hosts), or at least hosts ({c.hosts})"))
    sizes = (c.db_allocated_storage_gb, c.db_max_allocated_storage_gb)
    if all(isinstance(s, int) for s in sizes) and c.db_max_allocated_storage_gb < c.db_allocated_storage_gb:
        problems.append(
            allowed(
                "db_max_allocated_storage_gb",
                c.db_max_allocated_storage_gb,
                f"at least db_allocated_storage_gb ({c.db_allocated_storage_gb})",
            )
        )
    if c.replica_region and c.replica_region == c.region:
        problems.append(
            allowed("replica_region", c.replica_region, f"a region other than region ({c.region}), or none")
        )
    elif (
        c.is_prod
        and not c.replica_region
        and c.region in rds_ca.regions()
        and not regions.default_replica_region(c.region)
    ):
        problems.append(
            allowed(
                "replica_region",
                "",
                f"in prod in {c.region} (no other region under the same law), a region you choose or none",
            )
        )
    return problems


# ---------------------------------------------------------------------------------------------
# Loading: defaults < orthweb.toml < ORTHWEB_* environment variables. Values arrive as TOML
# values or strings and are converted by the field's type.


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    return int(value)


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _to_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else _BOOL_WORDS[str(value).strip().lower()]


def _to_optional_int(value: Any) -> int | None:
    return None if isinstance(value, str) and not value.strip() else _to_int(value)


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
            tls=_to_bool(i.get("tls", False)),
        )
        for i in items
    )


def _to_text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise ValueError
    return str(value)


# Field type -> (converter, what a value of that type looks like).
_CONVERTERS: dict[Any, tuple[Callable[[Any], Any], str]] = {
    int: (_to_int, "a whole number"),
    bool: (_to_bool, "true or false"),
    bool | None: (_to_optional_bool, "true, false, or empty"),
    int | None: (_to_optional_int, "a whole number, or empty"),
    tuple[str, ...]: (_to_strings, "a comma-separated list (or a TOML list)"),
    tuple[tuple[str, str], ...]: (_to_pairs, "key=value pairs separated by commas (or a TOML table)"),
    tuple[DicomModality, ...]: (
        _to_modalities,
        'a JSON list of {"aet", "host", "port", "rights"} objects (or TOML tables)',
    ),
    str: (_to_text, "text"),
}


def field_types() -> dict[str, Any]:
    return get_type_hints(OrthwebConfig)


def _coerce(name: str, kind: Any, value: Any, problems: list[str]) -> Any:
    """Turn a TOML or environment value into the field's type; record a problem if impossible."""
    convert, expected = _CONVERTERS[kind]
    try:
        return convert(value)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        problems.append(allowed(name, value, expected))
        return dataclasses.MISSING


def load_config(root: Path, environ: Mapping[str, str]) -> OrthwebConfig:
    """Build and validate the config from ``root/orthweb.toml`` (optional) and ``environ``."""
    known = field_types()
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
                problems.append(allowed(f"{CONFIG_FILE_NAME}: {key}", key, "the fields listed in docs/inputs.md"))
            else:
                values[key] = _coerce(key, known[key], value, problems)
    for env_name, value in environ.items():
        if not env_name.startswith(ENV_PREFIX) or env_name in TOOL_VARIABLES:
            continue
        key = env_name[len(ENV_PREFIX) :].lower()
        if key not in known:
            problems.append(allowed(env_name, "set", "ORTHWEB_<FIELD> for the fields listed in docs/inputs.md"))
        else:
            values[key] = _coerce(key, known[key], value, problems)
    if problems:
        raise ConfigError(problems)
    return OrthwebConfig(**values).validate()
