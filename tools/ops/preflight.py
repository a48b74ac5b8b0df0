"""Production preflight: the configured site against the checklist of docs/production.md, item by item.

    python -m tools.ops.preflight [--json] [--account]     # make preflight [ARGS=--account]

Reads the site exactly as ``python main.py`` does (defaults, then ``orthweb.toml``, then
``ORTHWEB_*`` variables), synthesizes it once into a temporary folder (nothing in ``cdktf.out``
changes) and prints one line per checklist item: PASS (done), WARN (a decision or a step a person
must take, said in the line), FAIL (not fit for production). The item ids are the ones
docs/production.md carries; a test keeps the two in step. With ``--account`` it also asks the AWS
account (your credentials, the site's region) what only the account knows: its Elastic IP quota and
the addresses it already holds.

Exit codes: 1 when an item FAILs and ``environment = "prod"``; 0 otherwise (outside prod the
statuses are advice); 2 when the config itself is refused, with the same lines as ``main.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from config import ROOT, regions
from config.facts import SSH_PORT
from config.inputs import PUBLIC_ADDRESS_BOUND, ConfigError, OrthwebConfig, load_config, public_addresses

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
EXIT_FAIL = 1
EXIT_CONFIG_ERROR = 2
DOC = ROOT / "docs" / "production.md"

# Thresholds of the checklist (docs/production.md says why).
LOG_DAYS_ENOUGH = 365  # a year of flow, container and session logs
LOG_DAYS_MINIMUM = 90  # less cannot cover a quarter's access review
NONCURRENT_DAYS_ENOUGH = 30  # a deleted study can be recovered for a month at least
# EC2's default quota of Elastic IP addresses per region (Service Quotas: ec2, L-0263D0A3).
EIP_DEFAULT_QUOTA = 5
EIP_QUOTA_CODE = "L-0263D0A3"


@dataclass(frozen=True)
class AccountFacts:
    """What the account says (``--account``): its Elastic IP quota in the region and the addresses it
    holds for something other than this site (the site's own count once, on a redeploy)."""

    eip_quota: int
    other_addresses: int


class AccountUnreadable(RuntimeError):
    pass


def account_facts(config: OrthwebConfig) -> AccountFacts:
    """Ask the account, in the site's region, with the caller's AWS credentials."""
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise AccountUnreadable("boto3 is not installed: run make setup-dev once") from None
    try:
        quota = boto3.client("service-quotas", region_name=config.region).get_service_quota(
            ServiceCode="ec2", QuotaCode=EIP_QUOTA_CODE
        )["Quota"]["Value"]
        addresses = boto3.client("ec2", region_name=config.region).describe_addresses()["Addresses"]
    except (BotoCoreError, ClientError) as exc:
        raise AccountUnreadable(str(exc)) from None
    mine = f"{config.name}-"
    others = [
        a for a in addresses if not any(t["Key"] == "Name" and t["Value"].startswith(mine) for t in a.get("Tags", []))
    ]
    return AccountFacts(int(quota), len(others))


@dataclass
class Site:
    """The configured site and, synthesized on first use, its Terraform JSON; with ``account``, what
    the AWS account said (or why it could not)."""

    config: OrthwebConfig
    _stack: dict[str, Any] | None = field(default=None, repr=False)
    account: AccountFacts | str | None = None

    @property
    def stack(self) -> dict[str, Any]:
        if self._stack is None:
            self._stack = synthesize(self.config)
        return self._stack


def synthesize(config: OrthwebConfig) -> dict[str, Any]:
    """The site's synthesized JSON, built in a temporary folder (cdktf.out is left alone)."""
    from main import build_app

    out = Path(tempfile.mkdtemp(prefix="orthweb-preflight-"))
    try:
        build_app(config, str(out)).synth()
        data: dict[str, Any] = json.loads((out / "stacks" / config.name / "cdk.tf.json").read_text())
        return data
    finally:
        shutil.rmtree(out, ignore_errors=True)


Verdict = tuple[str, str]  # (status, what was found and what to do)


@dataclass(frozen=True)
class Item:
    """One checklist item: its id and title in docs/production.md, the inputs that set it, its check."""

    id: str
    title: str
    inputs: tuple[str, ...]
    check: Callable[[Site], Verdict]


@dataclass(frozen=True)
class Finding:
    id: str
    title: str
    status: str
    detail: str


# -- the checks, in the order of docs/production.md ----------------------------------------------------


def _client_networks(site: Site) -> Verdict:
    c = site.config
    shown = f"web {', '.join(c.web_client_cidrs)}; DICOM {', '.join(c.dicom_client_cidrs)}"
    wide = PUBLIC_ADDRESS_BOUND
    dicom, web = public_addresses(c.dicom_client_cidrs), public_addresses(c.web_client_cidrs)
    if dicom > wide and c.dicom_client_auth != "certificate":
        return FAIL, f"{shown}: {dicom:,} public addresses may send and query DICOM with any AE title"
    if web > wide:
        return FAIL, f"{shown}: {web:,} public addresses may reach the web login"
    if dicom > wide:
        return WARN, f"{shown}: narrow the DICOM networks to your modalities' where you can"
    return PASS, shown


def _dicom_client_certificates(site: Site) -> Verdict:
    if site.config.dicom_client_auth == "certificate":
        return PASS, "modalities need a certificate from make modality-cert (issue one per modality)"
    return WARN, "no client certificates: any host in dicom_client_cidrs can store and query as any AE title"


def _replica_region(site: Site) -> Verdict:
    c = site.config
    if not c.replication:
        return WARN, "no replica: losing the region loses the DICOM archive (set replica_region)"
    home, away = regions.JURISDICTION.get(c.region), regions.JURISDICTION.get(c.replication)
    if home != away:
        return WARN, f"replicated to {c.replication}: PHI leaves {home} for {away}; check your agreements allow it"
    return PASS, f"DICOM objects replicated to {c.replication} (same jurisdiction: {home})"


def _alarm_email(site: Site) -> Verdict:
    if site.config.alarm_email:
        return PASS, f"alarms to {site.config.alarm_email} (confirm the subscription e-mail AWS sends)"
    return WARN, "no alarm e-mail: alarms reach the topic but nobody (set alarm_email or subscribe the topic)"


def _certificate_trust(site: Site) -> Verdict:
    c = site.config
    if c.tls_certificate_secret:
        return PASS, f"your certificate from {c.tls_certificate_secret}"
    names = f"the site's AWS name{' and ' + c.site_name if c.site_name else ''}"
    return WARN, f"site CA certificate for {names}: install orthweb-ca.pem on every client (README)"


def _backups(site: Site) -> Verdict:
    c = site.config
    shown = (
        f"RDS backups {c.db_backup_retention_days} d, AWS Backup {c.backup_retention_days or 'off'}"
        f", deleted DICOM versions kept {c.noncurrent_version_expiration_days} d"
        + (f", Object Lock {c.object_lock_days} d" if c.object_lock_days else "")
    )
    if not c.backup_retention_days:
        return WARN, f"{shown}: no AWS Backup copy of the database (set backup_retention_days)"
    if c.noncurrent_version_expiration_days < NONCURRENT_DAYS_ENOUGH:
        return WARN, f"{shown}: a deleted study can be recovered for less than {NONCURRENT_DAYS_ENOUGH} days"
    return PASS, shown


def _deletion_protection(site: Site) -> Verdict:
    c = site.config
    if c.allow_data_destroy:
        return FAIL, "allow_data_destroy = true: a destroy deletes the DICOM objects, secrets and database for good"
    if not c.db_deletion_protection:
        return FAIL, "db_deletion_protection = false: the database (and load balancer) can be deleted"
    return PASS, "database deletion-protected; a destroy keeps buckets, secrets and a final snapshot"


def _team_state(site: Site) -> Verdict:
    backend = site.stack.get("terraform", {}).get("backend", {})
    if "s3" in backend:
        return PASS, f"state in s3://{backend['s3'].get('bucket')}/{backend['s3'].get('key')}"
    kind = next(iter(backend), "local")
    return WARN, f"state in a {kind} file: one operator, one machine (put it in S3: docs/production.md)"


def _scaled_profile(site: Site) -> Verdict:
    c = site.config
    zones = c.az_count if c.scaled else 1
    shown = f"{c.hosts} host(s) over {zones} zone(s), database {'Multi-AZ' if c.multi_az else 'single-AZ'}"
    if not c.multi_az:
        return WARN, f"{shown}: a database zone's loss stops the site (db_multi_az)"
    if not c.scaled:
        return WARN, f"{shown}: a zone's loss stops the site until a redeploy; hosts >= 2 if that is too long"
    if c.az_count < 2:
        return WARN, f"{shown}: every host in one zone (az_count)"
    return PASS, shown


def _image_digests(site: Site) -> Verdict:
    c = site.config
    loose = [image for image in (c.orthanc_image, c.nginx_image) if "@sha256:" not in image]
    if loose:
        return WARN, f"pinned by tag only: {', '.join(loose)} (add @sha256:<digest>: README)"
    return PASS, "both images pinned by digest"


def _break_glass(site: Site) -> Verdict:
    roles = site.config.break_glass_role_arns
    if not roles:
        return WARN, (
            "no break_glass_role_arns: only Orthanc's role reads the studies, so make recover and an "
            "emergency read of the bucket need a policy change first (docs/recovery.md)"
        )
    return PASS, f"{len(roles)} break-glass role(s) may read the studies besides Orthanc"


def _session_manager_only(site: Site) -> Verdict:
    if site.config.ssh_public_key:
        return FAIL, "an SSH key pair is installed: a credential outside Session Manager's logged sessions"
    return PASS, f"no SSH key, no port {SSH_PORT}: shells through Session Manager only (logged, encrypted)"


def _log_retention(site: Site) -> Verdict:
    c = site.config
    days = c.retention_days
    if days < LOG_DAYS_MINIMUM:
        return FAIL, f"logs kept {days} days: less than a quarter"
    missing = [
        what
        for what, on in (
            ("container logs (who connected)", c.container_logs),
            ("CloudTrail data events", c.audit_trail),
        )
        if not on
    ]
    if days < LOG_DAYS_ENOUGH or missing:
        shortfall = [f"logs kept {days} days"] if days < LOG_DAYS_ENOUGH else []
        return WARN, "; ".join([*shortfall, *(f"no {m}" for m in missing)])
    return PASS, f"logs kept {days} days, container logs and CloudTrail data events on"


def _elastic_ips(site: Site) -> Verdict:
    needed = len(site.stack.get("resource", {}).get("aws_eip", {}))
    check = f"aws service-quotas get-service-quota --service-code ec2 --quota-code {EIP_QUOTA_CODE}"
    if isinstance(site.account, AccountFacts):
        quota, held = site.account.eip_quota, site.account.other_addresses
        if needed + held > quota:
            return (
                FAIL,
                f"needs {needed} Elastic IPs; the account holds {held} others of its quota of {quota} in "
                f"{site.config.region}: the apply would fail with AddressLimitExceeded. Request an increase "
                f"({check}), release addresses, or use fewer zones (az_count)",
            )
        return PASS, f"needs {needed} Elastic IPs; the account holds {held} others of its quota of {quota}"
    if isinstance(site.account, str):
        return WARN, f"could not ask the account ({site.account}); needs {needed} Elastic IPs"
    if needed > EIP_DEFAULT_QUOTA:
        return (
            WARN,
            f"needs {needed} Elastic IPs, more than the default quota of {EIP_DEFAULT_QUOTA} a region: request an "
            f"increase first ({check}), or fewer zones (az_count)",
        )
    return (
        PASS,
        f"needs {needed} Elastic IP{'s' if needed > 1 else ''} of the region's quota (default {EIP_DEFAULT_QUOTA}); "
        "addresses the account already holds count against it (ARGS=--account asks the account)",
    )


def _cost(site: Site) -> Verdict:
    from tools.ops.cost import CostError, estimate
    from tools.ops.tfjson import Stack, TfJsonError

    try:
        e = estimate(Stack.from_json(site.stack))
    except (CostError, TfJsonError) as exc:
        return WARN, f"no estimate: {exc}"
    return PASS, f"about {e.total:.0f} {e.table.currency} a month in {e.region} (prices of {e.table.date}; make cost)"


ITEMS: tuple[Item, ...] = (
    Item("client-networks", "Narrow client networks", ("web_client_cidrs", "dicom_client_cidrs"), _client_networks),
    Item("dicom-client-certificates", "DICOM client certificates", ("dicom_client_auth",), _dicom_client_certificates),
    Item("replica-region", "Replica region", ("replica_region", "region"), _replica_region),
    Item("alarm-email", "Alarm e-mail", ("alarm_email",), _alarm_email),
    Item(
        "certificate-trust",
        "Your own certificate, or clients that trust the site CA",
        ("tls_certificate_secret", "site_name"),
        _certificate_trust,
    ),
    Item(
        "backups",
        "Backups and retention",
        (
            "db_backup_retention_days",
            "backup_retention_days",
            "noncurrent_version_expiration_days",
            "object_lock_days",
        ),
        _backups,
    ),
    Item(
        "deletion-protection",
        "Deletion protection, no data destroy",
        ("db_deletion_protection", "allow_data_destroy"),
        _deletion_protection,
    ),
    Item("team-state", "Team state in S3", ("state_bucket", "state_kms_key"), _team_state),
    Item(
        "scaled-profile",
        "The scaled profile when the site must survive a zone",
        ("hosts", "hosts_max", "az_count", "db_multi_az"),
        _scaled_profile,
    ),
    Item("image-digests", "Image digests pinned", ("orthanc_image", "nginx_image"), _image_digests),
    Item("session-manager-only", "Session Manager only", ("ssh_public_key",), _session_manager_only),
    Item("break-glass", "A break-glass role for the studies", ("break_glass_role_arns",), _break_glass),
    Item("log-retention", "Log retention", ("log_retention_days", "container_logs", "cloudtrail"), _log_retention),
    Item("elastic-ips", "Elastic IP addresses within the quota", ("hosts", "az_count"), _elastic_ips),
    Item(
        "cost",
        "Cost",
        ("hosts", "instance_type", "db_instance_class", "db_multi_az", "replica_region", "interface_endpoints"),
        _cost,
    ),
)


def run(site: Site) -> list[Finding]:
    findings = []
    for item in ITEMS:
        status, detail = item.check(site)
        findings.append(Finding(item.id, item.title, status, detail))
    return findings


def exit_code(config: OrthwebConfig, findings: list[Finding]) -> int:
    return EXIT_FAIL if config.is_prod and any(f.status == FAIL for f in findings) else 0


def report(config: OrthwebConfig, findings: list[Finding]) -> str:
    width = max(len(f.id) for f in findings)
    lines = [f"orthweb preflight: site {config.name!r}, environment {config.environment}, region {config.region}"]
    lines += [f"{f.status}  {f.id:<{width}}  {f.detail}" for f in findings]
    counts = {s: sum(f.status == s for f in findings) for s in (PASS, WARN, FAIL)}
    verdict = "not ready for production" if counts[FAIL] and config.is_prod else "see docs/production.md"
    if counts[FAIL] and not config.is_prod:
        verdict = f"advice only (environment {config.environment}); see docs/production.md"
    lines.append(f"{counts[PASS]} PASS, {counts[WARN]} WARN, {counts[FAIL]} FAIL: {verdict}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.ops.preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument(
        "--account", action="store_true", help="also ask the AWS account (your credentials): Elastic IP quota and use"
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(ROOT, os.environ if environ is None else environ)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"orthweb: config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    site = Site(config)
    if args.account:
        try:
            site.account = account_facts(config)
        except AccountUnreadable as exc:
            site.account = str(exc)
    findings = run(site)
    code = exit_code(config, findings)
    if args.json:
        print(
            json.dumps(
                {
                    "site": config.name,
                    "environment": config.environment,
                    "exit": code,
                    "items": [asdict(f) for f in findings],
                },
                indent=2,
            )
        )
    else:
        print(report(config, findings), end="")
    return code


if __name__ == "__main__":
    sys.exit(main())
