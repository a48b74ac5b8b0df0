"""Orthweb recovery: bring back DICOM instances deleted from the bucket, by re-ingesting them through Orthanc.

    python -m tools.ops.recover --bucket B --since 2025-06-01T09:30:00Z --url https://<site> \\
        --ca orthweb-ca.pem --password-file admin-password [--user admin] [--region R] [--dry-run] [--json]

The DICOM bucket is versioned. When Orthanc deletes an instance (a user, a script or the REST API
deleting a study), its storage plugin deletes the object ``<uuid>.dcm`` (and ``<uuid>.dcm.head``):
S3 puts a delete marker on top and keeps the file as a noncurrent version until the lifecycle rule
expires it (``noncurrent_version_expiration_days``, 90 by default). This command finds every key
whose latest version is a delete marker created at or after ``--since`` and that has an earlier
version which is a DICOM file, reads the newest such version and POSTs it to Orthanc's
``/instances`` over HTTPS (the site CA, Basic auth), exactly as an upload through the REST API.

What it leaves alone, each reported as skipped with the reason: delete markers created before
``--since``; ``.dcm.head`` attachments (Orthanc's cached header up to the pixel data: Orthanc writes
a new one when the instance comes back); keys that are not ``.dcm`` attachments; ``.dcm`` versions
whose bytes are not a DICOM file (no "DICM" after the 128-byte preamble); the site validator's test
instance (``ORTHWEB^VALIDATION``), which the validator stores and deletes on purpose every run.

Why re-ingest instead of removing the delete markers: Orthanc's DELETE removed the index rows that
pointed at ``<uuid>``; an undeleted object would be a file no index row refers to. Re-ingesting makes
Orthanc parse the file, write new index rows and a NEW object under a NEW attachment UUID. The old
key therefore stays deleted (this command never removes or adds a delete marker) and its old version
still expires with the lifecycle rule; the instance lives on in the new object.

Repeating a run is harmless. Before sending a file, the command asks Orthanc whether it has the
instance (under the ID Orthanc derives from the patient, study, series and SOP instance UIDs); if it
has, the file is not sent and the instance counts as ``AlreadyStored``. Asking rather than sending
matters: for a duplicate, Orthanc writes the file to the bucket, answers AlreadyStored and deletes
it again, which would leave one more deleted object behind for every duplicate. One case is a
failure: Orthanc has the instance and its index still points at the very object that was deleted
(the index was restored to a time before the deletion, docs/recovery.md Part B). Re-ingesting cannot
help there; that object must be undeleted (remove its delete marker), or the instance deleted again.

``--rebuild-index`` re-ingests the current (not deleted) DICOM objects last written at or after
``--since`` instead: the files alone rebuild a new, empty index (docs/recovery.md Part C).

The password is read from ``--password-file``, never taken as an argument, never printed. Exit code
0 when every chosen object is in Orthanc afterwards (``Success`` or ``AlreadyStored``; in a dry run:
when every one could be read), 1 otherwise or when the bucket or Orthanc cannot be used, 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import ssl
import sys
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from config.facts import ORTHANC_ADMIN_USER
from tools.ops.orthanc_http import OrthancHttp, tls_context
from tools.ops.site import client
from tools.ops.validate import TEST_PATIENT

DICOM_SUFFIX = ".dcm"
# Orthanc's DICOM_UNTIL_PIXEL_DATA attachment: derived from the instance, rebuilt on ingest.
HEADER_SUFFIX = ".dcm.head"
PREAMBLE_LENGTH = 128  # a DICOM file (PS3.10): 128-byte preamble, then the magic "DICM"
DICOM_MAGIC = b"DICM"
# Orthanc answers these when the instance is in its index afterwards.
STORED = ("Success", "AlreadyStored")
UPLOAD_TIMEOUT = 600  # seconds; one instance can be hundreds of MB (whole-slide, multi-frame)
QUERY_TIMEOUT = 30  # seconds; a small REST answer


@dataclass
class Entry:
    """One version or delete marker of a key, as S3 lists it."""

    key: str
    version_id: str
    last_modified: dt.datetime
    is_latest: bool
    is_marker: bool


@dataclass
class KeyHistory:
    latest: Entry | None = None
    # S3 lists a key's versions newest first: the first one seen is the newest file.
    newest_file: Entry | None = None


@dataclass
class Outcome:
    key: str
    version_id: str
    # When the key was deleted (the delete marker), or last written (--rebuild-index).
    changed_at: str
    sop_instance_uid: str = ""
    # To tell which study an object belongs to (--json): no patient data is printed.
    study_instance_uid: str = ""
    status: str = ""
    orthanc_id: str = ""
    ok: bool = False
    detail: str = ""


@dataclass
class Skipped:
    key: str
    reason: str
    # Set for what is expected in bulk (every deletion before --since, ...): the text report counts
    # these under this heading instead of printing one line each; --json lists them all.
    group: str = ""


@dataclass
class Report:
    bucket: str
    since: str
    mode: str
    dry_run: bool
    objects: list[Outcome] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and all(o.ok for o in self.objects)

    def summary(self) -> dict[str, int]:
        ok = [o.status for o in self.objects if o.ok]
        return {
            "chosen": len(self.objects),
            "success": ok.count("Success"),
            "already_stored": ok.count("AlreadyStored"),
            "would_reingest": ok.count("dry run"),
            "failed": sum(not o.ok for o in self.objects),
            "skipped": len(self.skipped),
        }


# -- the bucket --------------------------------------------------------------------------------


def list_entries(s3: Any, bucket: str) -> Iterator[Entry]:
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for item, is_marker in [(v, False) for v in page.get("Versions", [])] + [
            (m, True) for m in page.get("DeleteMarkers", [])
        ]:
            yield Entry(item["Key"], item["VersionId"], item["LastModified"], item["IsLatest"], is_marker)


def histories(entries: Iterable[Entry]) -> dict[str, KeyHistory]:
    found: dict[str, KeyHistory] = {}
    for entry in entries:
        history = found.setdefault(entry.key, KeyHistory())
        if entry.is_latest:
            history.latest = entry
        if not entry.is_marker and history.newest_file is None:
            history.newest_file = entry
    return found


def attachment_kind(key: str) -> str:
    """Why a key is not a DICOM attachment, or "" when it is one."""
    if key.endswith(HEADER_SUFFIX):
        return "a .dcm.head attachment (Orthanc's header cache; it writes a new one when the instance is re-ingested)"
    if not key.endswith(DICOM_SUFFIX):
        return "not a DICOM attachment (.dcm) key"
    return ""


def out_of_scope(history: KeyHistory, since: dt.datetime, rebuild_index: bool) -> Skipped | None:
    """Whether a key is outside what this run restores: None when it is in scope, a Skipped (with
    the reason) when it is worth reporting; keys that were simply never deleted are not in scope
    and not worth a line (they would be the whole bucket)."""
    latest = history.latest
    assert latest is not None
    key, when = latest.key, iso(latest.last_modified)
    if rebuild_index and latest.is_marker:
        why = "deleted (--rebuild-index re-ingests current objects only)"
        return Skipped(key, why, group=why)
    if latest.last_modified < since:
        what = "last written" if rebuild_index else "deleted"
        return Skipped(key, f"{what} {when}, before --since", group=f"{what} before --since")
    why_not = attachment_kind(key)
    if why_not:
        return Skipped(key, why_not)
    if history.newest_file is None:
        return Skipped(key, "no earlier version is left (expired by the lifecycle rule, or never versioned)")
    return None


def choose(
    found: dict[str, KeyHistory], since: dt.datetime, rebuild_index: bool
) -> tuple[list[tuple[Entry, dt.datetime]], list[Skipped]]:
    """The versions to re-ingest (with when their key was deleted, or written with --rebuild-index),
    and what is left alone."""
    chosen: list[tuple[Entry, dt.datetime]] = []
    skipped: list[Skipped] = []
    for key in sorted(found):
        history = found[key]
        latest = history.latest
        # No latest entry: only older versions were listed. Not deleted: none of our business.
        if latest is None or (not rebuild_index and not latest.is_marker):
            continue
        reason = out_of_scope(history, since, rebuild_index)
        if reason:
            skipped.append(reason)
        elif history.newest_file is not None:
            chosen.append((history.newest_file, latest.last_modified))
    return chosen, skipped


def is_dicom_file(data: bytes) -> bool:
    return data[PREAMBLE_LENGTH : PREAMBLE_LENGTH + len(DICOM_MAGIC)] == DICOM_MAGIC


@dataclass
class Identity:
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    # The ID Orthanc gives this instance, "" when the identifiers cannot be read.
    orthanc_id: str = ""
    validation_instance: bool = False


def identify(data: bytes) -> Identity:
    """The instance's identifiers, read with pydicom (Orthanc stays the judge of the file)."""
    from pydicom import dcmread

    tags = ["PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=tags)
    except Exception:  # noqa: BLE001 - an unreadable header is Orthanc's to refuse, with its own message
        return Identity()
    values = {tag: str(ds.get(tag, "") or "").strip() for tag in tags}
    identity = Identity(
        values["SOPInstanceUID"], values["StudyInstanceUID"], validation_instance=values["PatientName"] == TEST_PATIENT
    )
    if all(values[tag] for tag in tags[2:]):
        # Orthanc's instance ID is the SHA-1 of "PatientID|StudyInstanceUID|SeriesInstanceUID|
        # SOPInstanceUID" in five groups of eight hex digits. Should it ever differ, the lookup below
        # finds nothing and the file is simply sent (Orthanc then answers AlreadyStored).
        joined = "|".join(values[tag] for tag in ("PatientID", *tags[2:]))
        digest = hashlib.sha1(joined.encode(), usedforsecurity=False).hexdigest()
        identity.orthanc_id = "-".join(digest[i : i + 8] for i in range(0, len(digest), 8))
    return identity


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


# -- Orthanc -----------------------------------------------------------------------------------


class Orthanc:
    def __init__(self, url: str, ca: Path, user: str, password: str):
        self.url = url.rstrip("/")
        self.user = user
        self.http = OrthancHttp(self.url, context=tls_context(ca), auth=(user, password))

    def call(
        self, path: str, method: str = "GET", data: bytes | None = None, timeout: float = QUERY_TIMEOUT
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/dicom"} if data is not None else None
        answer = self.http.request(path, method=method, data=data, headers=headers, timeout=timeout)
        return answer.status, _json(answer.body)

    def check(self) -> str:
        """One readable line when REST does not answer with these credentials; empty when it does."""
        try:
            status, body = self.call("/system")
        except OSError as exc:
            reason = getattr(exc, "reason", exc)
            return f"cannot reach Orthanc at {self.url}: {reason}"
        if status == 401:
            return (
                f"Orthanc at {self.url} refused the credentials of user {self.user!r} (HTTP 401): "
                "check --user and --password-file"
            )
        if status != 200:
            return f"Orthanc at {self.url} answered HTTP {status} to GET /system: {_message(body)}"
        return ""

    def attachment_uuid(self, instance: str) -> str:
        """The UUID of the instance's DICOM file, "" when Orthanc does not have the instance (or
        does not answer: then the upload that follows fails with the reason)."""
        try:
            status, body = self.call(f"/instances/{instance}/attachments/dicom/info")
        except OSError:
            return ""
        return str(body.get("Uuid", "")) if status == 200 else ""


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"Message": raw[:200].decode(errors="replace")}
    return value if isinstance(value, dict) else {"Value": value}


def _message(body: dict[str, Any]) -> str:
    return " - ".join(str(body[k]) for k in ("Message", "Details") if body.get(k)) or "no details"


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Options:
    bucket: str
    since: dt.datetime
    url: str
    ca: Path
    user: str
    password: str
    region: str | None
    endpoint_url: str | None
    dry_run: bool
    rebuild_index: bool
    as_json: bool


INDEX_REFERS_TO_DELETED = (
    "Orthanc's index still refers to this deleted object (index older than the deletion?): undelete it "
    "by removing its delete marker, or delete the instance again; see docs/recovery.md Part B"
)


def object_uuid(key: str) -> str:
    return key.rsplit("/", 1)[-1].removesuffix(DICOM_SUFFIX)


def settle(orthanc: Orthanc, outcome: Outcome, data: bytes, identity: Identity, options: Options) -> None:
    """Bring one instance back into Orthanc (or, in a dry run, say what would happen)."""
    # Asked first rather than sending the file: for an instance it already has, Orthanc writes the
    # file to the bucket, answers AlreadyStored and deletes the file again, leaving one more deleted
    # object behind (and one more for the next run to find).
    known = orthanc.attachment_uuid(identity.orthanc_id) if identity.orthanc_id else ""
    if known:
        outcome.orthanc_id, outcome.status = identity.orthanc_id, "AlreadyStored"
        if not options.rebuild_index and known == object_uuid(outcome.key):
            outcome.detail = INDEX_REFERS_TO_DELETED
        else:
            outcome.ok, outcome.detail = True, "in Orthanc already (not sent again)"
        return
    if options.dry_run:
        outcome.ok, outcome.status = True, "dry run"
        return
    try:
        status, body = orthanc.call("/instances", method="POST", data=data, timeout=UPLOAD_TIMEOUT)
    except OSError as exc:
        outcome.detail = f"POST /instances failed: {getattr(exc, 'reason', exc)}"
        return
    outcome.status = str(body.get("Status", f"HTTP {status}"))
    outcome.orthanc_id = str(body.get("ID", ""))
    if status != 200 or outcome.status not in STORED:
        outcome.detail = f"Orthanc answered HTTP {status}: {_message(body)}"
    elif (
        outcome.status == "AlreadyStored"
        and not options.rebuild_index
        and orthanc.attachment_uuid(outcome.orthanc_id) == object_uuid(outcome.key)
    ):
        outcome.detail = INDEX_REFERS_TO_DELETED
    else:
        outcome.ok = True


def plan(s3: Any, options: Options, report: Report) -> list[tuple[Entry, dt.datetime]]:
    """What to re-ingest; what is left alone goes to the report (and any bucket error)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        versioning = s3.get_bucket_versioning(Bucket=options.bucket).get("Status")
        if not versioning and not options.rebuild_index:
            report.error = f"bucket {options.bucket} has never had versioning: deleted objects are gone"
            return []
        found = histories(list_entries(s3, options.bucket))
    except (BotoCoreError, ClientError) as exc:
        report.error = f"cannot list the object versions in bucket {options.bucket}: {exc}"
        return []
    chosen, report.skipped = choose(found, options.since, options.rebuild_index)
    return chosen


def run(options: Options, out: Any = None) -> Report:
    from botocore.exceptions import BotoCoreError, ClientError

    out = out or sys.stdout
    mode = "current objects (--rebuild-index)" if options.rebuild_index else "deleted objects"
    report = Report(options.bucket, iso(options.since), mode, options.dry_run)

    def say(line: str) -> None:
        if not options.as_json:  # one line per object as it goes: a long run shows its progress
            print(line, file=out, flush=True)

    orthanc = Orthanc(options.url, options.ca, options.user, options.password)
    # Credentials and the CA are checked first, in a dry run too: a wrong password must show at
    # once, not after the bucket has been read object by object.
    report.error = orthanc.check()
    if report.error:
        return report
    s3 = client("s3", options.region, options.endpoint_url)
    for entry, changed_at in plan(s3, options, report):
        outcome = Outcome(entry.key, entry.version_id, iso(changed_at))
        where = f"{entry.key} (version {entry.version_id})"
        try:
            data = s3.get_object(Bucket=options.bucket, Key=entry.key, VersionId=entry.version_id)["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            outcome.detail = f"cannot read this version: {exc}"
            report.objects.append(outcome)
            say(f"FAILED         {where}: {outcome.detail}")
            continue
        if not is_dicom_file(data):
            report.skipped.append(Skipped(entry.key, "not a DICOM file (no 'DICM' after the 128-byte preamble)"))
            continue
        identity = identify(data)
        if identity.validation_instance:
            # The validator stores and deletes this instance on every run: deleted on purpose.
            report.skipped.append(Skipped(entry.key, f"the site validator's test instance ({TEST_PATIENT})"))
            continue
        outcome.sop_instance_uid, outcome.study_instance_uid = identity.sop_instance_uid, identity.study_instance_uid
        report.objects.append(outcome)
        settle(orthanc, outcome, data, identity, options)
        where += f" SOP {outcome.sop_instance_uid or '?'}"
        if not outcome.ok:
            say(f"FAILED         {where}: {outcome.detail}")
        elif outcome.status == "dry run":
            say(f"WOULD RESTORE  {where} ({len(data)} bytes)")
        elif outcome.status == "AlreadyStored":
            say(f"IN ORTHANC     {where}: AlreadyStored, instance {outcome.orthanc_id}")
        else:
            say(f"RESTORED       {where}: Orthanc {outcome.status}, instance {outcome.orthanc_id}")
    return report


def print_report(report: Report, as_json: bool, out: Any = None) -> None:
    out = out or sys.stdout
    n = report.summary()
    if as_json:
        document = {
            "ok": report.ok,
            "bucket": report.bucket,
            "since": report.since,
            "mode": report.mode,
            "dry_run": report.dry_run,
            "error": report.error,
            "objects": [asdict(o) for o in report.objects],
            "skipped": [{"key": s.key, "reason": s.reason} for s in report.skipped],
            "summary": n,
        }
        print(json.dumps(document, indent=1), file=out)
        return
    if report.error:
        print(f"recover: FAILED: {report.error}; nothing was re-ingested", file=out)
        return
    groups: dict[str, int] = {}
    for s in report.skipped:
        if s.group:
            groups[s.group] = groups.get(s.group, 0) + 1
        else:
            print(f"SKIPPED        {s.key}: {s.reason}", file=out)
    for group, count in groups.items():
        print(f"SKIPPED        {count} object(s) {group}, left alone (--json lists them)", file=out)
    sent = f"{n['would_reingest']} would be re-ingested" if report.dry_run else f"{n['success']} re-ingested (Success)"
    print(
        f"recover{' (dry run)' if report.dry_run else ''}: {n['chosen']} chosen: {sent}, "
        f"{n['already_stored']} already in Orthanc (AlreadyStored), {n['failed']} failed; {n['skipped']} skipped; "
        f"{report.mode} since {report.since} in bucket {report.bucket}: {'OK' if report.ok else 'NOT OK'}",
        file=out,
    )


# -- arguments ---------------------------------------------------------------------------------


def parse_since(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (e.g. 2025-06-01T09:30:00Z)") from exc
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone: add Z (UTC) or an offset such as +02:00")
    # S3 reports LastModified to the whole second: a marker made at 09:30:00.6 is listed as 09:30:00,
    # so a --since of 09:30:00.2 would miss it. Compare at S3's resolution.
    return moment.replace(microsecond=0)


def parse(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="python -m tools.ops.recover", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--bucket", required=True, help="the DICOM bucket (versioned)")
    p.add_argument("--since", required=True, type=parse_since, help="ISO 8601 time with zone; deletions from then on")
    p.add_argument("--url", required=True, help="the site's HTTPS address, https://host[:port]")
    p.add_argument("--ca", type=Path, required=True, help="PEM file of the site CA (or the public CA)")
    p.add_argument("--password-file", type=Path, required=True, help="file holding the password (not an argument)")
    p.add_argument("--user", default=ORTHANC_ADMIN_USER)
    p.add_argument("--region", default=None, help="the bucket's region (default: the AWS configuration's)")
    p.add_argument("--endpoint-url", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dry-run", action="store_true", help="list what would be re-ingested; change nothing")
    p.add_argument(
        "--rebuild-index",
        action="store_true",
        help="re-ingest the current (not deleted) DICOM objects instead: rebuild a new, empty index",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)
    url = urllib.parse.urlsplit(a.url)
    if url.scheme != "https" or not url.hostname or url.path not in ("", "/"):
        p.error(f"--url: {a.url!r} is not https://host[:port] (the password is only ever sent over TLS)")
    if a.since > dt.datetime.now(dt.UTC):
        p.error(f"--since: {iso(a.since)} is in the future")
    for name in ("ca", "password_file"):
        if not getattr(a, name).is_file():
            p.error(f"--{name.replace('_', '-')}: {getattr(a, name)} is not a readable file")
    try:
        ssl.create_default_context(cafile=str(a.ca))
    except ssl.SSLError:
        p.error(f"--ca: {a.ca} holds no PEM certificate")
    password = a.password_file.read_text().strip()
    if not password:
        p.error(f"--password-file: {a.password_file} is empty")
    return Options(
        a.bucket,
        a.since,
        a.url,
        a.ca,
        a.user,
        password,
        a.region,
        a.endpoint_url,
        a.dry_run,
        a.rebuild_index,
        a.json,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    report = run(options)
    print_report(report, options.as_json)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
