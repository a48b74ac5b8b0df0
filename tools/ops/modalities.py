"""DICOM client certificates: mutual TLS on the DICOM port, one certificate per modality.

    python -m tools.ops.modalities --site <name> [--region R] issue <MODALITY> --out DIR [--days N]
    python -m tools.ops.modalities --site <name> [--region R] list [--json]
    python -m tools.ops.modalities --site <name> [--region R] revoke <MODALITY>

Two Secrets Manager secrets per site (created empty by Terraform, encrypted with the site key):

- ``<name>/dicom-client-ca``: ``{"ca_cert", "ca_key"}``, the client CA. Operators only; the host
  role cannot read it.
- ``<name>/dicom-clients``: ``{"ca_cert", "crl", "issued": [{"name", "serial", "not_after",
  "revoked"}]}``. The host reads it and gives nginx ``ssl_client_certificate`` (ca_cert) and
  ``ssl_crl`` (crl).

``issue`` creates the client CA on first use, issues a clientAuth certificate for the modality,
records it and re-signs the CRL; ``revoke`` marks it revoked and re-signs the CRL; ``list`` shows
what was issued (never keys). Changes reach nginx when the host next reads the secrets and reloads.

Key material never appears in output, logs or process arguments; key files are created 0600.
Each command reads, changes and writes a whole secret: run one at a time per site (a write that
raced another one is detected afterwards and reported, exit 1). Exit codes: 0 done, 1 AWS or
stored-state problem, 2 bad arguments (including an unknown or already-issued modality).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from config.facts import CLIENT_CA_SECRET as CA_SECRET
from config.facts import CLIENTS_SECRET
from config.inputs import allowed, field_problems
from userdata.host import pki

MODALITY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MODALITY_RULE = "1-64 characters: letters A-Z a-z, digits, '_', '.', '-'"
DEFAULT_DAYS = 825
CA_LIFETIME = datetime.timedelta(days=3653)  # 10 years
MAX_DAYS = 3650  # no client certificate outlives a new CA; an older CA's remaining life is checked too
# nginx refuses *every* client certificate ("CRL has expired") once the CRL's nextUpdate has
# passed, and nothing re-signs the CRL on its own schedule: it is re-signed only by issue and
# revoke. A short nextUpdate would lock every modality out of a quiet site; five years (capped at
# the CA's own end) outlasts a default certificate (825 days) twice over, and every issue or revoke
# starts it afresh.
CRL_LIFETIME = datetime.timedelta(days=1826)
# RSA rather than EC: every DICOM TLS stack a modality may run (dcmtk, dcm4che, vendor Windows and
# Java stacks) handles RSA client keys; ECDSA support is not universal.
KEY_BITS = 3072


# The CA key this command signs with: it creates RSA; an EC P-256 CA (the contract allows either)
# signs just as well.
CAKey = pki.SigningKey


class UsageError(Exception):
    """A bad argument (exit 2); the message names the argument and what is allowed."""


class StateError(Exception):
    """AWS refused, or the stored secrets are not what this command expects (exit 1)."""


@dataclass(frozen=True)
class Issued:
    """One entry of ``issued`` in the clients secret, in the field order of the contract."""

    name: str
    serial: str  # lowercase hex, no separators
    not_after: str  # ISO date (YYYY-MM-DD) of the certificate's notAfter, UTC
    revoked: bool


# -- certificates ---------------------------------------------------------------------------------


def ca_subject(site: str) -> str:
    return f"Orthweb {site} DICOM client CA"


def make_ca(site: str) -> tuple[x509.Certificate, pki.SigningKey]:
    """The site's client CA: signs client certificates and the CRL, nothing below it can sign."""
    return pki.make_ca(pki.subject(ca_subject(site)), CA_LIFETIME.days, bits=KEY_BITS)


def issue_client(
    ca_cert: x509.Certificate, ca_key: CAKey, modality: str, days: int
) -> tuple[x509.Certificate, pki.SigningKey]:
    """A clientAuth certificate for ``modality`` (CN) and its new key."""
    return pki.issue(ca_cert, ca_key, pki.subject(modality), days, client=True, bits=KEY_BITS)


def sign_crl(ca_cert: x509.Certificate, ca_key: CAKey, issued: list[Issued], previous: str | None) -> str:
    """A fresh CRL listing every revoked serial of ``issued``.

    Revocation dates come from the previous CRL (the record of when each was revoked); a serial
    revoked just now gets the current time. The CRL number counts up from the previous one.
    """
    now = pki.now()
    dates: dict[int, datetime.datetime] = {}
    number = 1
    if previous:
        try:
            old = pki.load_crl(previous)
        except ValueError:
            raise StateError("the stored CRL is not a PEM CRL; refusing to drop the revocations it may hold") from None
        if not pki.crl_signed_by(old, ca_cert):
            raise StateError("the stored CRL is not signed by the stored client CA; refusing to carry it over")
        dates = {r.serial_number: pki.revocation_date(r) for r in old}
        try:
            number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
        except x509.ExtensionNotFound:
            pass
    revoked = {int(e.serial, 16): dates.get(int(e.serial, 16), now) for e in issued if e.revoked}
    return pki.crl_pem(pki.sign_crl(ca_cert, ca_key, revoked, days=CRL_LIFETIME.days, number=number))


# -- the two secrets ------------------------------------------------------------------------------


@dataclass
class Stored:
    """A secret's parsed value (None when it has none yet) and the version it was read at."""

    value: dict[str, Any] | None
    version: str | None


class Secrets:
    """Reads and writes the site's two secrets; never prints or logs a value."""

    def __init__(self, client: Any, site: str, region: str):
        self.client = client
        self.site = site
        self.region = region

    def secret_id(self, which: str) -> str:
        return f"{self.site}/{which}"

    def _call(self, what: str, fn: Any, missing_is_usage: bool = False, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") == "ResourceNotFoundException" and missing_is_usage:
                raise UsageError(
                    f"--site: no secret {kwargs['SecretId']} in region {self.region}; "
                    "is the site deployed there under that name?"
                ) from None
            raise StateError(f"{what}: {error.get('Code')}: {error.get('Message')}") from None
        except BotoCoreError as exc:
            raise StateError(f"{what}: {exc}") from None

    def read(self, which: str) -> Stored:
        secret_id = self.secret_id(which)
        # Describe first: it tells "no such secret" (wrong --site or region) from "no value yet".
        described = self._call(
            f"describe {secret_id}", self.client.describe_secret, missing_is_usage=True, SecretId=secret_id
        )
        current = [v for v, stages in described.get("VersionIdsToStages", {}).items() if "AWSCURRENT" in stages]
        if not current:
            return Stored(None, None)
        got = self._call(f"read {secret_id}", self.client.get_secret_value, SecretId=secret_id)
        text = got.get("SecretString") or ""
        if not text.strip() or text.strip() == "{}":
            return Stored(None, got["VersionId"])
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise StateError(f"{secret_id} does not hold JSON") from None
        if not isinstance(value, dict):
            raise StateError(f"{secret_id} does not hold a JSON object")
        return Stored(value, got["VersionId"])

    def write(self, which: str, value: dict[str, Any], read_at: str | None) -> None:
        """Store ``value`` as the new current version, then check nobody else wrote in between.

        Secrets Manager has no conditional write. After ours, the version we read must be the one
        now labelled AWSPREVIOUS; if another command stored a version between our read and our
        write, that version was overwritten and the operator has to know.
        """
        secret_id = self.secret_id(which)
        put = self._call(
            f"write {secret_id}", self.client.put_secret_value, SecretId=secret_id, SecretString=json.dumps(value)
        )
        described = self._call(f"describe {secret_id}", self.client.describe_secret, SecretId=secret_id)
        stages = described.get("VersionIdsToStages", {})
        previous = [v for v, labels in stages.items() if "AWSPREVIOUS" in labels]
        expected = [read_at] if read_at else []
        if previous != expected or "AWSCURRENT" not in stages.get(put["VersionId"], []):
            raise StateError(
                f"{secret_id} was changed by someone else while this command ran: their version "
                f"{', '.join(previous) or '(none)'} was overwritten by ours ({put['VersionId']}). "
                "Run `list`, and run their change again if it is missing; run one command at a time per site."
            )


def client_state(secrets: Secrets) -> tuple[Stored, list[Issued]]:
    """The clients secret and its ``issued`` list (empty when the secret has no value yet)."""
    clients = secrets.read(CLIENTS_SECRET)
    if clients.value is None:
        return clients, []
    try:
        issued = [Issued(e["name"], e["serial"], e["not_after"], bool(e["revoked"])) for e in clients.value["issued"]]
        for entry in issued:
            int(entry.serial, 16)  # the CRL needs it as a number
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"{secrets.secret_id(CLIENTS_SECRET)} is not in the expected form ({exc})") from None
    return clients, issued


def load_ca(secrets: Secrets, clients: Stored) -> tuple[Stored, tuple[x509.Certificate, CAKey] | None]:
    """The CA secret and, when it has a value, the client CA checked against the clients secret."""
    stored = secrets.read(CA_SECRET)
    ca_id, clients_id = secrets.secret_id(CA_SECRET), secrets.secret_id(CLIENTS_SECRET)
    if stored.value is None:
        if clients.value is not None:
            # Creating a new CA now would silently strand every certificate already issued.
            raise StateError(f"{ca_id} is empty but {clients_id} is not: restore the CA secret's previous version")
        return stored, None
    try:
        cert = pki.load_cert(stored.value["ca_cert"])
        key = pki.load_key(stored.value["ca_key"])
    except (KeyError, ValueError, TypeError, AttributeError):
        raise StateError(f"{ca_id} does not hold a PEM ca_cert and an unencrypted PEM ca_key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise StateError(f"{ca_id}: ca_key is not the RSA or EC key of ca_cert")
    if clients.value is not None and str(clients.value.get("ca_cert", "")).strip() != pki.cert_pem(cert).strip():
        raise StateError(f"{clients_id} names a different CA than {ca_id}; restore the matching versions")
    return stored, (cert, key)


def clients_value(ca_cert: x509.Certificate, crl: str, issued: list[Issued]) -> dict[str, Any]:
    return {"ca_cert": pki.cert_pem(ca_cert), "crl": crl, "issued": [asdict(e) for e in issued]}


# -- commands -------------------------------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    # Created 0600 in one step (no moment of wider permissions) and never over an existing file.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def output_files(out: Path, modality: str) -> dict[str, Path]:
    return {
        "key": out / f"{modality}.key",
        "cert": out / f"{modality}.crt",
        "chain": out / f"{modality}-chain.pem",
        "ca": out / "site-client-ca.pem",
    }


def cmd_issue(secrets: Secrets, modality: str, out: Path, days: int) -> list[str]:
    files = output_files(out, modality)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} is not a directory")
    if files["key"].exists():
        raise UsageError(f"--out: {files['key']} already exists; move it away or choose another directory")
    # Checked before anything is stored: a certificate recorded whose key could not be written
    # would have to be revoked straight away.
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out: {existing} is not writable")
    clients, issued = client_state(secrets)
    active = [e for e in issued if e.name == modality and not e.revoked]
    if active:
        raise UsageError(
            f"MODALITY: {modality!r} already has a certificate (serial {active[0].serial}, valid until "
            f"{active[0].not_after}); revoke it first to issue a new one"
        )
    lines = []
    stored_ca, loaded = load_ca(secrets, clients)
    if loaded is None:
        new_cert, new_key = make_ca(secrets.site)
        # The CA is stored before anything it signs exists: a certificate must never outlive the
        # only copy of the key that can revoke it.
        secrets.write(CA_SECRET, {"ca_cert": pki.cert_pem(new_cert), "ca_key": pki.key_pem(new_key)}, stored_ca.version)
        lines.append(f"created the client CA {ca_subject(secrets.site)!r} in {secrets.secret_id(CA_SECRET)}")
        loaded = new_cert, new_key
    ca_cert, ca_key = loaded
    room = (pki.not_after(ca_cert) - pki.now()).days
    if days > room:
        raise UsageError(allowed("--days", days, f"at most {room} (the client CA's remaining life)"))
    cert, key = issue_client(ca_cert, ca_key, modality, days)
    entry = Issued(modality, format(cert.serial_number, "x"), pki.not_after(cert).date().isoformat(), False)
    issued.append(entry)
    previous_crl = clients.value.get("crl") if clients.value else None
    crl = sign_crl(ca_cert, ca_key, issued, previous_crl)
    # Recorded before the key file exists, so every certificate that exists can be revoked by name.
    secrets.write(CLIENTS_SECRET, clients_value(ca_cert, crl, issued), clients.version)
    out.mkdir(parents=True, exist_ok=True)
    _write_private(files["key"], pki.key_pem(key))
    files["cert"].write_text(pki.cert_pem(cert))
    files["chain"].write_text(pki.cert_pem(cert) + pki.cert_pem(ca_cert))
    files["ca"].write_text(pki.cert_pem(ca_cert))
    lines += [
        f"issued {modality}: serial {entry.serial}, valid until {entry.not_after}",
        f"  {files['key']} (private key, 0600), {files['cert']}, {files['chain']} (certificate + client CA)",
        f"  {files['ca']}: the client CA (nginx trusts it; the modality verifies the server with the site CA)",
        f"recorded in {secrets.secret_id(CLIENTS_SECRET)}; the host picks it up on its next refresh",
    ]
    return lines


def cmd_list(secrets: Secrets, as_json: bool) -> list[str]:
    _, issued = client_state(secrets)
    if as_json:
        return [json.dumps([asdict(e) for e in issued], indent=1)]
    if not issued:
        return [f"no DICOM client certificates issued for {secrets.site}"]
    rows = [("name", "serial", "not_after", "revoked")] + [
        (e.name, e.serial, e.not_after, "yes" if e.revoked else "no") for e in issued
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows]


def cmd_revoke(secrets: Secrets, modality: str) -> list[str]:
    clients, issued = client_state(secrets)
    matching = [i for i, e in enumerate(issued) if e.name == modality]
    active = [i for i in matching if not issued[i].revoked]
    if not active:
        known = sorted({e.name for e in issued if not e.revoked})
        if matching:
            raise UsageError(f"MODALITY: {modality!r} is already revoked (serial {issued[matching[-1]].serial})")
        raise UsageError(
            f"MODALITY: {modality!r} has no certificate at site {secrets.site}; "
            f"allowed: a modality with an unrevoked certificate: {', '.join(known) or '(none yet)'}"
        )
    _, loaded = load_ca(secrets, clients)
    if loaded is None:  # client_state found entries, so load_ca has raised already
        raise StateError(f"{secrets.secret_id(CA_SECRET)} is empty")
    ca_cert, ca_key = loaded
    for i in active:
        issued[i] = Issued(issued[i].name, issued[i].serial, issued[i].not_after, True)
    crl = sign_crl(ca_cert, ca_key, issued, clients.value.get("crl") if clients.value else None)
    secrets.write(CLIENTS_SECRET, clients_value(ca_cert, crl, issued), clients.version)
    serials = ", ".join(issued[i].serial for i in active)
    return [
        f"revoked {modality}: serial {serials}; the CRL in {secrets.secret_id(CLIENTS_SECRET)} is re-signed",
        "nginx refuses the certificate once the host has written the new CRL and reloaded (its next refresh)",
    ]


# -- command line ---------------------------------------------------------------------------------


def site_problems(site: str) -> list[str]:
    # The same rule as the stack's `name` input: secret names are `<name>/...`.
    return field_problems("name", site, "--site")


def add_site_arguments(p: argparse.ArgumentParser) -> None:
    """--site, --region (and the emulator's --endpoint-url) of a command on one site's secrets."""
    p.add_argument("--site", help="the site's name (the `name` input; default: the project's config)")
    p.add_argument("--region", default=None, help="AWS region of the site (default: the project's config)")
    p.add_argument("--local", action="store_true", help="the site of make local-up (make ... SITE=local)")
    p.add_argument("--endpoint-url", default=None, help=argparse.SUPPRESS)  # the AWS API emulator in tests


def site_arguments(p: argparse.ArgumentParser, a: argparse.Namespace) -> list[str]:
    """Fill --site and --region from the site this checkout deploys (orthweb.toml and ORTHWEB_*
    variables, as `make synth` reads them) when not given, or from the local site (--local); the
    problems with --site."""
    if a.local:
        from tools.ops.site import LOCAL_SITE_STATE, on_loopback

        if not LOCAL_SITE_STATE.is_file():
            p.error("--local: no local site is up: run make local-up first")
        state = json.loads(LOCAL_SITE_STATE.read_text())
        if not on_loopback(state["emulator"]):
            p.error(f"--local: {LOCAL_SITE_STATE} names {state['emulator']!r}, not an emulator on loopback")
        a.site, a.region, a.endpoint_url = state["name"], state["region"], state["emulator"]
    if a.site is None or (a.region is None and a.endpoint_url is None):
        from config import ROOT
        from config.inputs import ConfigError, load_config

        try:
            config = load_config(ROOT, os.environ)
        except ConfigError as exc:
            p.error("; ".join(exc.problems))
        a.site = a.site or config.name
        a.region = a.region or config.region
    return site_problems(a.site)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.ops.modalities", description=__doc__.split("\n")[0])
    add_site_arguments(p)
    commands = p.add_subparsers(dest="command", required=True, metavar="{issue,list,revoke}")
    issue = commands.add_parser("issue", help="issue a client certificate (creates the client CA on first use)")
    issue.add_argument("modality", metavar="MODALITY", help=MODALITY_RULE)
    issue.add_argument("--out", type=Path, required=True, help="folder for the key, certificate and CA files")
    issue.add_argument("--days", type=int, default=DEFAULT_DAYS, help=f"validity in days (default {DEFAULT_DAYS})")
    listing = commands.add_parser("list", help="name, serial, not_after, revoked of every certificate issued")
    listing.add_argument("--json", action="store_true", help="print the issued list as JSON")
    revoke = commands.add_parser("revoke", help="revoke a modality's certificate and re-sign the CRL")
    revoke.add_argument("modality", metavar="MODALITY")
    return p


def secrets_client(p: argparse.ArgumentParser, a: argparse.Namespace) -> Any:
    """Secrets Manager for the site's region, or the exit code: 2 without credentials, 1 otherwise."""
    from botocore.exceptions import BotoCoreError, NoRegionError

    from tools.ops.site import NoCredentials, client, require_credentials

    try:
        require_credentials(a.endpoint_url)
        return client("secretsmanager", a.region, a.endpoint_url)
    except NoCredentials as exc:
        print(f"{p.prog.rsplit('.', 1)[-1]}: error: {exc}", file=sys.stderr)
        return 2
    except NoRegionError:
        p.error("--region: no region given and none in the AWS configuration; give the site's region")
    except BotoCoreError as exc:
        print(f"{p.prog.rsplit('.', 1)[-1]}: error: {exc}", file=sys.stderr)
        return 1


def run_on_secrets(p: argparse.ArgumentParser, a: argparse.Namespace, body: Callable[[Secrets], list[str]]) -> int:
    """How make modality-cert and make user end: ``body`` on the site's secrets, its lines printed
    (exit 0); a usage error exits 2 naming it, a state error 1, no AWS credentials 2."""
    client = secrets_client(p, a)
    if isinstance(client, int):
        return client
    try:
        lines = body(Secrets(client, a.site, client.meta.region_name))
    except UsageError as exc:
        p.error(str(exc))
    except StateError as exc:
        print(f"{p.prog.rsplit('.', 1)[-1]}: error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = parser()
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    problems = site_arguments(p, a)
    if a.command in ("issue", "revoke") and not MODALITY_NAME.fullmatch(a.modality):
        problems.append(allowed("MODALITY", a.modality, MODALITY_RULE))
    if a.command == "issue" and not 1 <= a.days <= MAX_DAYS:
        problems.append(allowed("--days", a.days, f"a whole number from 1 to {MAX_DAYS}"))
    if problems:
        p.error("; ".join(problems))

    def body(secrets: Secrets) -> list[str]:
        if a.command == "issue":
            return cmd_issue(secrets, a.modality, a.out, a.days)
        if a.command == "revoke":
            return cmd_revoke(secrets, a.modality)
        return cmd_list(secrets, a.json)

    return run_on_secrets(p, a, body)


if __name__ == "__main__":
    sys.exit(main())
