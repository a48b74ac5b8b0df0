"""Facts of an Orthweb site, each written once: ports, names, default images, host paths.

Python code, the rendered templates (docker-compose.yml, nginx.conf, orthanc.json, site.env) and
the tests read them from here.
"""

from __future__ import annotations

# -- ports --------------------------------------------------------------------------------------
HTTPS_PORT = 443  # the front door: Orthanc web UI and REST API over TLS
DICOM_TLS_PORT = 11112  # the front door: DICOM over TLS (IANA "dicom-tls")
ORTHANC_HTTP_PORT = 8042  # Orthanc's own HTTP port, reached only through nginx
ORTHANC_DICOM_PORT = 4242  # Orthanc's own DICOM port, reached only through nginx
POSTGRES_PORT = 5432  # RDS PostgreSQL
SSH_PORT = 22  # never opened: administration goes through SSM Session Manager

# -- DICOM and Orthanc --------------------------------------------------------------------------
DEFAULT_AE_TITLE = "ORTHANC"
ORTHANC_ADMIN_USER = "admin"
# Named users' roles (docker/orthweb_roles.py enforces them inside Orthanc; the admin user is "admin").
USER_ROLES = ("viewer", "uploader", "researcher", "admin")
# Called "Name" in Orthanc; shown in the UI.
SITE_LABEL = "Orthweb"

# -- database -----------------------------------------------------------------------------------
DB_NAME = "orthanc"
# RDS master user: used by the host only to create the application role, never by Orthanc.
DB_MASTER_USER = "orthweb_admin"
# The role Orthanc connects as (owner of DB_NAME, no superuser).
APP_DB_USER = "orthanc"

# -- names of things the stack creates ------------------------------------------------------------
# Secret names (not values): <name>/orthanc-admin holds the Orthanc admin and app DB role passwords,
# <name>/site-tls the server certificate chain and key.
# <name>/site-ca holds the site CA (name-constrained to the site) and its key, read only by the host;
# <name>/dicom-client-ca the DICOM client CA key, read only by operators; <name>/dicom-clients its
# certificate, revocation list and the list of issued client certificates.
ADMIN_SECRET = "orthanc-admin"  # noqa: S105
TLS_SECRET = "site-tls"  # noqa: S105
CA_SECRET = "site-ca"  # noqa: S105
CA_CERT_SECRET = "site-ca-cert"  # noqa: S105 - a secret name, not a value
CLIENT_CA_SECRET = "dicom-client-ca"  # noqa: S105
CLIENTS_SECRET = "dicom-clients"  # noqa: S105
# <name>/users: the named users ({"users": {name: {"role", "password", "enabled"}}}), written by
# `make user`, read by the host.
USERS_SECRET = "users"  # noqa: S105 - a secret name, not a value
TRAIL_PREFIX = "cloudtrail"  # key prefix of CloudTrail log files in the log bucket
# unique_suffix: "-" and this many random bytes as hex after the name (unknown until apply).
NAME_SUFFIX_BYTES = 3
# The scaled profile's target groups, "<name>-<label>": AWS allows at most 32 characters.
TARGET_GROUP_LABELS = ("https", "dicom")
TARGET_GROUP_NAME_LIMIT = 32

# -- images -------------------------------------------------------------------------------------
# orthancteam/orthanc 26.8.1 (2026-08-19): Orthanc 1.13.0, PostgreSQL plugin 10.3, AWS S3 plugin 2.5.4,
# DICOMweb 1.24, Orthanc Explorer 2 1.14.1, Ubuntu 26.04 (orthanc-builder release notes). Since 26.7.0
# the image refuses legacy environment variables (Orthweb uses none) and an empty RegisteredUsers
# with authentication on (Orthweb always provides it).
# Both pinned by digest (the multi-platform index), the tag kept for reading: docker pulls by the
# digest, so a re-pushed tag cannot change what a host runs. This machine reaches no registry: the
# digests were read from public records (nginx: docker-library/repo-info repos/nginx/remote/1.30.4.md;
# Orthanc: the same 26.8.1 digest pinned by two public projects), and a host's first pull checks
# them (a wrong digest fails the boot with "manifest unknown": the host-program-errors alarm).
ORTHANC_IMAGE = "orthancteam/orthanc:26.8.1@sha256:ffdfa1141b6b89a631c10d5ac612e18b934d601c3501e73b597bd700ecfd4004"
# nginx 1.30.4, the stable branch (docker-library/official-images); built with the stream and
# stream-SSL modules; >= 1.25.1 takes "http2 on;".
NGINX_IMAGE = "nginx:1.30.4@sha256:585d4e63ef9a0c34cbb46fefa3449d16d38bf4a8d3d817e6638962d8b7578696"

# -- monitoring ---------------------------------------------------------------------------------
# The CloudWatch agent on each host reports its root volume's use in this namespace.
HOST_METRICS_NAMESPACE = "Orthweb/Host"
# What the agent publishes there: metric -> its dimensions ("<plugin>_<measurement>", aggregated by
# site; userdata/host/bootstrap.py writes the agent's configuration, tests/test_aws_rules.py holds the two together).
HOST_AGENT_METRICS = {"disk_used_percent": ("Site",)}
# EC2 families whose instances a CloudWatch alarm may recover (the recover action; AWS's list, EBS-only
# sizes, not metal). Another type gets an alarm that notifies: replace its host (make recover).
RECOVERABLE_FAMILIES = frozenset(
    "a1 c3 c4 c5 c5a c5n c6a c6g c6gn c6i c6in c7a c7g c7gn c7i c7i-flex inf1 m3 m4 m5 m5a m5n m5zn m6a m6g "
    "m6i m6in m7a m7g m7i m7i-flex p3 r3 r4 r5 r5a r5b r5n r6a r6g r6i r6in r7a r7g r7i r7iz t2 t3 t3a t4g "
    "x1 x1e".split()
)


def ec2_can_recover(instance_type: str) -> bool:
    """Whether the recover action works on ``instance_type`` (family listed, not a metal size)."""
    family, _, size = instance_type.partition(".")
    return family in RECOVERABLE_FAMILIES and not size.startswith("metal")


# How the host's program starts its error and warning lines ("<tag> ERROR: ...", "<tag> WARNING: ...");
# the alarms on its log filter on it (tests/test_host_program.py runs the program to hold the two together).
HOST_PROGRAM_LOG_TAG = "orthweb-bootstrap:"

# -- the AWS API emulator (rehearsals and local runs only) --------------------------------------------
# Not a credential: the emulator accepts any key; named so no scanner mistakes it for one.
EMULATOR_PLACEHOLDER_KEY = "emulator-placeholder"

# The Orthanc DICOMweb plugin's root (QIDO-RS, STOW-RS, WADO-RS), behind the same authentication as REST.
DICOMWEB_ROOT = "/dicom-web/"

# AWS's Session Manager document for port forwarding to a remote host: the database tunnel
# (tools/ops/db_tunnel.py) and the operator policy that allows it (modules/access.py).
PORT_FORWARDING_DOCUMENT = "AWS-StartPortForwardingSessionToRemoteHost"
