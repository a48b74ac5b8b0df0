"""Recovery on the local site: studies deleted through Orthanc come back from the versioned bucket
(tools.ops.recover, docs/recovery.md Part A), and the files alone rebuild an empty index (Part C).

The real path throughout: DICOM TLS in, REST over the TLS front door, Orthanc with its PostgreSQL
index and the S3 stand-in plugin writing to the AWS API emulator; the command runs as a separate
program, as an operator would run it, with the site CA and a password file."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from config.facts import APP_DB_USER, DB_NAME
from tests.local_site import (
    attachment_uuid,
    auth,
    dataset_bytes,
    lookup,
    object_keys,
    run_command,
    run_validator,
    send_site,
)
from tools.harness.dicom_sender import make_instances
from tools.harness.localsite import LocalSite

pytestmark = pytest.mark.e2e

STUDY_SIZE = 5


@pytest.fixture
def site(tmp_path):
    s = LocalSite(tmp_path / "site").start()
    try:
        # Versioning before anything is stored (the deployed bucket has it from the start).
        s.s3.put_bucket_versioning(Bucket=s.bucket, VersioningConfiguration={"Status": "Enabled"})
        yield s
    finally:
        s.stop()


def make_study(count: int, patient: str) -> list[tuple[bytes, str]]:
    """``count`` instances of one study and series; returns (file bytes, SOPInstanceUID) each."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    instances = []
    for number, (data, uid) in enumerate(make_instances(count), start=1):
        ds = dcmread(io.BytesIO(data))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, number
        ds.PatientName, ds.PatientID = patient, patient.replace("^", "-")
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        instances.append((buffer.getvalue(), uid))
    return instances


def store_study(s: LocalSite, count: int, patient: str) -> tuple[str, dict[str, bytes], dict[str, str]]:
    """Store a study over DICOM TLS; returns its Orthanc ID, each instance's file as Orthanc serves
    it (by SOPInstanceUID), and each instance's attachment UUID (the object key's name)."""
    instances = make_study(count, patient)
    assert len(send_site(s, instances).acknowledged) == count
    files, uuids, studies = {}, {}, set()
    for _, uid in instances:
        instance = lookup(s, uid)
        status, body = s.rest(f"/instances/{instance}/file", auth=auth(s))
        assert status == 200
        files[uid], uuids[uid] = body, attachment_uuid(s, instance)
        studies.add(json.loads(s.rest(f"/instances/{instance}/study", auth=auth(s))[1])["ID"])
    assert len(studies) == 1, "one study"
    return studies.pop(), files, uuids


def versions(s: LocalSite) -> dict[str, list[tuple[str, bool, bool]]]:
    """Every key's versions and delete markers: (version id, is latest, is delete marker)."""
    found: dict[str, list[tuple[str, bool, bool]]] = {}
    for page in s.s3.get_paginator("list_object_versions").paginate(Bucket=s.bucket):
        for item, marker in [(v, False) for v in page.get("Versions", [])] + [
            (m, True) for m in page.get("DeleteMarkers", [])
        ]:
            found.setdefault(item["Key"], []).append((item["VersionId"], item["IsLatest"], marker))
    return {key: sorted(entries) for key, entries in found.items()}


def latest_is_marker(s: LocalSite, key: str) -> bool:
    return any(latest and marker for _, latest, marker in versions(s).get(key, []))


def instance_ids(s: LocalSite) -> list[str]:
    status, body = s.rest("/instances", auth=auth(s))
    assert status == 200
    return sorted(json.loads(body))


def run_recover(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_command("tools.ops.recover", args, env)


def recover(s: LocalSite, tmp_path: Path, since: dt.datetime, *extra: str, password: str = "") -> tuple[int, str]:
    """The command as an operator runs it: a separate program, credentials from the environment
    (here the emulator's placeholder keys), the password in a file."""
    pw = tmp_path / "recover-password"
    pw.write_text((password or s.admin()["password"]) + "\n")
    pw.chmod(0o600)
    args = [
        "--bucket",
        s.bucket,
        "--since",
        since.isoformat(),
        "--url",
        f"https://127.0.0.1:{s.ports['https']}",
        "--ca",
        str(s.ca_path),
        "--password-file",
        str(pw),
        "--region",
        s.region,
        "--endpoint-url",
        s.emulator.endpoint,
        *extra,
    ]
    env = {**os.environ, **{k: v for k, v in s.emulator.client_env().items() if k != "AWS_ENDPOINT_URL"}}
    proc = run_recover(args, env)
    output = proc.stdout + proc.stderr
    assert s.admin()["password"] not in output and (not password or password not in output), "a password leaked"
    return proc.returncode, output


def aws(s: LocalSite, *args: str) -> str:
    """The AWS CLI, as the runbook uses it, against the emulator."""
    env = {**os.environ, **s.emulator.client_env()}
    proc = subprocess.run(
        ["aws", *args, "--output", "text", "--region", s.region, "--endpoint-url", s.emulator.endpoint],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def report(output: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(output)
    return document


def wait_past(moment: dt.datetime) -> None:
    """Wait until the wall clock (the emulator's too: same machine) is at or past ``moment``. A
    condition, not a duration: it returns as soon as that is true."""
    deadline = time.monotonic() + 30
    while dt.datetime.now(dt.UTC) < moment:
        assert time.monotonic() < deadline, "the clock did not advance"
        time.sleep(0.05)


@dataclass
class Deletion:
    """A study deleted through Orthanc after another one (deleted before ``since``), two objects that
    are no DICOM attachments deleted too, and ``make recover`` run on it: dry, with a wrong password,
    then for real. Run once for the module; what each step showed is kept for the tests below."""

    site: LocalSite
    folder: Path
    since: dt.datetime
    files: dict[str, bytes]
    uuids: dict[str, str]
    early_uid: str
    early_key: str
    early_files: dict[str, bytes]
    deletes: list[dict[str, Any]]
    current_keys: set[str]
    markers_hide_the_study: bool
    gone_from_orthanc: bool
    listing: str
    heads: list[str]
    before: dict[str, list[tuple[str, bool, bool]]]
    instances_before: list[str]
    dry: tuple[int, str, dict[str, list[tuple[str, bool, bool]]], list[str]]
    wrong_password: tuple[int, str, dict[str, list[tuple[str, bool, bool]]], list[str]]
    result: tuple[int, str]
    after: dict[str, list[tuple[str, bool, bool]]]

    @property
    def keys(self) -> dict[str, str]:
        return {uid: f"{uuid}.dcm" for uid, uuid in self.uuids.items()}

    @property
    def report(self) -> dict[str, Any]:
        return report(self.result[1])


@pytest.fixture(scope="module")
def deletion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deletion]:
    folder = tmp_path_factory.mktemp("recover")
    site = LocalSite(folder / "site").start()
    try:
        site.s3.put_bucket_versioning(Bucket=site.bucket, VersioningConfiguration={"Status": "Enabled"})
        yield _delete_and_recover(site, folder)
    finally:
        site.stop()


def _delete_and_recover(site: LocalSite, folder: Path) -> Deletion:
    s3, bucket = site.s3, site.bucket
    s3.put_object(Bucket=bucket, Key="notes/readme.txt", Body=b"not DICOM\n")
    s3.put_object(Bucket=bucket, Key="bogus.dcm", Body=b"named like DICOM, but no preamble and no DICM\n")
    # Negative control for --since: a study deleted BEFORE it must stay deleted.
    early_study, early_files, early_uuids = store_study(site, 1, "ORTHWEB^EARLY")
    assert site.rest(f"/studies/{early_study}", auth=auth(site), method="DELETE")[0] == 200
    early_markers = [
        m["LastModified"] for m in s3.list_object_versions(Bucket=bucket).get("DeleteMarkers", []) if m["IsLatest"]
    ]
    assert early_markers, "deleting through Orthanc leaves delete markers"
    since = max(early_markers).astimezone(dt.UTC) + dt.timedelta(seconds=1)
    wait_past(since)

    def deleted_heads() -> set[str]:
        return {k for k in versions(site) if k.endswith(".dcm.head") and latest_is_marker(site, k)}

    early_heads = deleted_heads()
    study, files, uuids = store_study(site, STUDY_SIZE, "ORTHWEB^RECOVERY")
    assert site.rest(f"/studies/{study}", auth=auth(site), method="DELETE")[0] == 200
    # Where the runbook finds who deleted what, and when: the front door's access log (nginx writes
    # the line after the answer has gone out: wait for it, briefly).
    deadline = time.monotonic() + 10
    while True:
        entries = [json.loads(line) for line in (site.workdir / "nginx" / "access.log").read_text().splitlines()]
        deletes = [e for e in entries if e.get("method") == "DELETE" and e.get("path") == f"/studies/{study}"]
        if deletes or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    keys = [f"{uuid}.dcm" for uuid in uuids.values()]
    markers_hide_the_study = all(latest_is_marker(site, key) for key in keys)
    gone_from_orthanc = all(lookup(site, uid) == "" for uid in files)
    query = "DeleteMarkers[?IsLatest].[LastModified,Key]"
    listing = aws(site, "s3api", "list-object-versions", "--bucket", bucket, "--query", query)
    heads = sorted(deleted_heads() - early_heads)  # Orthanc's header attachments of the study, if it wrote any
    s3.delete_object(Bucket=bucket, Key="notes/readme.txt")
    s3.delete_object(Bucket=bucket, Key="bogus.dcm")
    before, instances_before = versions(site), instance_ids(site)
    dry = recover(site, folder, since, "--dry-run", "--json")
    dry_state = (*dry, versions(site), instance_ids(site))
    wrong = recover(site, folder, since, password="not-the-password")
    wrong_state = (*wrong, versions(site), instance_ids(site))
    result = recover(site, folder, since, "--json")
    ((early_uid, early_uuid),) = early_uuids.items()
    return Deletion(
        site,
        folder,
        since,
        files,
        uuids,
        early_uid,
        f"{early_uuid}.dcm",
        early_files,
        deletes,
        object_keys(site),
        markers_hide_the_study,
        gone_from_orthanc,
        listing,
        heads,
        before,
        instances_before,
        dry_state,
        wrong_state,
        result,
        versions(site),
    )


def test_a_deleted_study_is_hidden_by_delete_markers_and_the_runbook_finds_who_and_when(deletion: Deletion):
    assert [(e["user"], e["status"]) for e in deletion.deletes] == [("admin", 200)] and deletion.deletes[0]["time"]
    keys = set(deletion.keys.values())
    assert not keys & deletion.current_keys, "the study's objects are gone from the bucket's listing"
    assert deletion.markers_hide_the_study, "each is hidden by a delete marker"
    assert deletion.gone_from_orthanc, "and gone from Orthanc"
    # The runbook's listing of the newest deletions shows them, with the deletion time.
    assert keys <= {line.split()[-1] for line in deletion.listing.splitlines() if line}
    for other in ("notes/readme.txt", "bogus.dcm"):
        assert any(latest and marker for _, latest, marker in deletion.before[other]), f"{other} is deleted too"


def test_a_dry_run_reports_and_changes_nothing(deletion: Deletion):
    code, output, after, instances = deletion.dry
    dry = report(output)
    assert code == 0 and dry["ok"] and dry["dry_run"], output
    assert sorted(o["sop_instance_uid"] for o in dry["objects"]) == sorted(deletion.files)
    assert {o["status"] for o in dry["objects"]} == {"dry run"} and dry["summary"]["would_reingest"] == STUDY_SIZE
    assert after == deletion.before and instances == deletion.instances_before


def test_a_wrong_password_exits_1_in_one_line_and_reingests_nothing(deletion: Deletion):
    code, output, after, instances = deletion.wrong_password
    assert code == 1, output
    assert "refused the credentials of user 'admin' (HTTP 401)" in output and "nothing was re-ingested" in output
    assert after == deletion.before and instances == deletion.instances_before


def test_exactly_the_study_is_chosen_and_the_rest_skipped_with_reasons(deletion: Deletion):
    code, output = deletion.result
    result = deletion.report
    assert code == 0 and result["ok"], output
    restored = {o["sop_instance_uid"]: o for o in result["objects"]}
    assert sorted(restored) == sorted(deletion.files), "exactly the study's instances were chosen"
    assert all(o["status"] == "Success" and o["ok"] for o in restored.values())
    assert {uid: o["key"] for uid, o in restored.items()} == deletion.keys
    assert len({o["study_instance_uid"] for o in restored.values()}) == 1, "one study, named in the report"
    assert all(o["version_id"] for o in restored.values())
    assert result["summary"] == {
        "chosen": STUDY_SIZE,
        "success": STUDY_SIZE,
        "already_stored": 0,
        "would_reingest": 0,
        "failed": 0,
        "skipped": len(result["skipped"]),
    }
    skipped = {s["key"]: s["reason"] for s in result["skipped"]}
    assert "not a DICOM attachment" in skipped["notes/readme.txt"]
    assert "not a DICOM file" in skipped["bogus.dcm"]
    for head in deletion.heads:
        assert ".dcm.head attachment" in skipped[head]
    assert "before --since" in skipped[deletion.early_key]


def test_orthanc_has_the_same_datasets_again_and_no_delete_marker_moved(deletion: Deletion):
    site = deletion.site
    restored = {o["sop_instance_uid"]: o for o in deletion.report["objects"]}
    compared = 0
    for uid, before_bytes in deletion.files.items():
        instance = lookup(site, uid)
        assert instance and instance == restored[uid]["orthanc_id"]
        status, body = site.rest(f"/instances/{instance}/file", auth=auth(site))
        assert status == 200 and dataset_bytes(body) == dataset_bytes(before_bytes), f"{uid} differs"
        assert attachment_uuid(site, instance) != deletion.uuids[uid], "re-ingested under a new attachment UUID"
        compared += len(dataset_bytes(body))
    assert compared > STUDY_SIZE * 256, "the datasets, pixel data included, were compared"
    # The study deleted before --since stays deleted.
    assert lookup(site, deletion.early_uid) == "" and list(deletion.early_files) == [deletion.early_uid]
    # No delete marker was removed or replaced: every key that was deleted is still deleted.
    for key, entries in deletion.before.items():
        assert set(entries) <= set(deletion.after[key]), key
        marked = any(latest and marker for _, latest, marker in entries)
        assert any(latest and marker for _, latest, marker in deletion.after[key]) == marked, key


def test_a_second_run_is_harmless_and_an_object_deleted_behind_orthancs_back_is_named(deletion: Deletion):
    """Runs last in the module: it changes the site the tests above read."""
    site, folder, since, files, s3 = deletion.site, deletion.folder, deletion.since, deletion.files, deletion.site.s3
    # Again: Orthanc already has every instance (found under the ID Orthanc gives it), nothing is
    # sent, and the bucket does not change (no object written and deleted again).
    settled = versions(site)
    code, output = recover(site, folder, since)
    assert code == 0, output
    assert f"0 re-ingested (Success), {STUDY_SIZE} already in Orthanc (AlreadyStored), 0 failed" in output
    found = sorted(line.rsplit("instance ", 1)[1] for line in output.splitlines() if line.startswith("IN ORTHANC"))
    assert found == sorted(lookup(site, uid) for uid in files)
    assert versions(site) == settled

    proc = run_validator(site, site.ca_path, site.admin()["password"], folder)
    assert proc.returncode == 0 and "site OK" in proc.stdout, proc.stdout + proc.stderr

    # An object deleted behind Orthanc's back (its index still refers to it, as after restoring
    # the index to a time before a deletion): re-ingesting cannot help, and the command says so.
    uid = sorted(files)[0]
    key = f"{attachment_uuid(site, lookup(site, uid))}.dcm"
    s3.delete_object(Bucket=site.bucket, Key=key)
    code, output = recover(site, folder, since)
    assert code == 1, output
    # The validator's own test instance, stored and deleted on purpose, is not brought back.
    assert "the site validator's test instance (ORTHWEB^VALIDATION)" in output
    assert "FAILED" not in output.replace(f"FAILED         {key}", "")
    line = next(line for line in output.splitlines() if line.startswith(f"FAILED         {key}"))
    assert "index still refers to this deleted object" in line and "docs/recovery.md Part B" in line
    # The runbook's remedy, with its commands: remove that delete marker; the index's reference works again.
    (marker,) = [v for v, latest, is_marker in versions(site)[key] if latest and is_marker]
    query = f"DeleteMarkers[?IsLatest && Key=='{key}'].VersionId"
    listed = aws(site, "s3api", "list-object-versions", "--bucket", site.bucket, "--prefix", key, "--query", query)
    assert listed == marker
    aws(site, "s3api", "delete-object", "--bucket", site.bucket, "--key", key, "--version-id", listed)
    status, body = site.rest(f"/instances/{lookup(site, uid)}/file", auth=auth(site))
    assert status == 200 and dataset_bytes(body) == dataset_bytes(files[uid])
    code, output = recover(site, folder, since)
    assert code == 0 and "0 failed" in output, output


def test_bad_arguments_exit_2(tmp_path):
    from tools.harness.pki import make_ca

    ca, pw, garbage = make_ca(tmp_path / "pki", "Some CA").cert, tmp_path / "pw", tmp_path / "garbage.pem"
    pw.write_text("secret\n")
    garbage.write_text("not a certificate\n")
    (tmp_path / "empty").write_text("\n")
    # Port 1 (tcpmux) does not answer here: the good arguments get as far as the connection.
    good = {"--bucket": "b", "--since": "2025-06-01T09:30:00Z", "--url": "https://127.0.0.1:1", "--ca": str(ca)}
    good["--password-file"] = str(pw)
    args = [part for option_value in good.items() for part in option_value]
    proc = run_recover(args)
    assert proc.returncode == 1 and "cannot reach Orthanc at https://127.0.0.1:1" in proc.stdout, proc.stdout
    for name, value, message in (
        ("--ca", str(garbage), "holds no PEM certificate"),
        ("--password-file", str(tmp_path / "empty"), "is empty"),
        ("--since", "2025-06-01T09:30:00", "has no time zone"),
        ("--since", "yesterday", "is not an ISO 8601 time"),
        ("--since", "2999-01-01T00:00:00Z", "is in the future"),
        ("--url", "http://127.0.0.1", "is not https://host[:port]"),
        ("--ca", str(tmp_path / "missing.pem"), "is not a readable file"),
    ):
        args = [part for option, v in {**good, name: value}.items() for part in (option, v)]
        proc = run_recover(args)
        assert proc.returncode == 2 and message in proc.stderr, (name, value, proc.stderr)
        assert "secret" not in proc.stdout + proc.stderr


def test_the_files_alone_rebuild_an_empty_index(site, tmp_path):
    site.s3.put_object(Bucket=site.bucket, Key="notes/readme.txt", Body=b"not DICOM\n")
    _, files, uuids = store_study(site, STUDY_SIZE, "ORTHWEB^REBUILD")
    # The index is lost: a new, empty database (as a new RDS instance would be); the bucket stays.
    site.stop_process("orthanc")
    site.pg.psql_superuser(f'DROP DATABASE "{DB_NAME}"', database="postgres")
    site.pg.psql_superuser(f'CREATE DATABASE "{DB_NAME}" OWNER "{APP_DB_USER}"', database="postgres")
    site.start_orthanc()
    assert instance_ids(site) == [], "Orthanc starts on an empty index"
    assert {f"{u}.dcm" for u in uuids.values()} <= object_keys(site), "the files are still in the bucket"
    heads = {k for k in object_keys(site) if k.endswith(".dcm.head")}  # Orthanc's header attachments, if any

    # As the runbook says: a --since before the bucket existed (its listed CreationDate can move later).
    created = next(b["CreationDate"] for b in site.s3.list_buckets()["Buckets"] if b["Name"] == site.bucket)
    since = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    assert since < created
    # Without --rebuild-index nothing was deleted, so there is nothing to do (negative control).
    code, output = recover(site, tmp_path, since)
    assert code == 0 and "0 chosen" in output and instance_ids(site) == [], output

    code, output = recover(site, tmp_path, since, "--rebuild-index", "--json")
    result = report(output)
    assert code == 0 and result["ok"], output
    assert sorted(o["sop_instance_uid"] for o in result["objects"]) == sorted(files)
    assert {o["status"] for o in result["objects"]} == {"Success"}
    skipped = {s["key"]: s["reason"] for s in result["skipped"]}
    assert "not a DICOM attachment" in skipped["notes/readme.txt"]
    for head in heads:
        assert ".dcm.head attachment" in skipped[head]
    assert len(instance_ids(site)) == STUDY_SIZE
    for uid, before_bytes in files.items():
        status, body = site.rest(f"/instances/{lookup(site, uid)}/file", auth=auth(site))
        assert status == 200 and dataset_bytes(body) == dataset_bytes(before_bytes), f"{uid} differs"
