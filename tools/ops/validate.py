"""Orthweb site validator: is a deployed (or local) site working, safely, end to end?

    python -m tools.ops.validate --host <site> --ca orthweb-ca.pem --password-file pw.txt [--json]

Checks, in order: HTTPS with the site CA (TLS 1.2+), REST refuses a request without credentials
and one with a wrong password, REST answers with the site credentials and the AE title matches,
C-ECHO and C-STORE over DICOM TLS with a generated test instance, the stored instance is read back
through REST with the same content, and optionally the object in the S3 bucket; finally the test
instance is deleted (and its object is gone). Prints a checklist; exit code 0 when every check
passes, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from config.facts import DEFAULT_AE_TITLE, DICOM_TLS_PORT, HTTPS_PORT, ORTHANC_ADMIN_USER

TEST_PATIENT = "ORTHWEB^VALIDATION"


@dataclass
class Result:
    name: str
    ok: bool
    detail: str


@dataclass
class Target:
    host: str
    https_port: int
    dicom_port: int
    ae_title: str
    ca: Path
    user: str
    password: str
    bucket: str = ""
    s3_endpoint: str = ""
    region: str = "us-east-1"
    database_uri: str = ""


def make_test_instance() -> tuple[bytes, str]:
    """A small, valid Secondary Capture instance with fresh UIDs; returns (file bytes, SOPInstanceUID)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = TEST_PATIENT, "ORTHWEB-VALIDATION", "OT"
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(range(256))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), str(ds.SOPInstanceUID)


def dataset_digest(data: bytes) -> str:
    """SHA-256 of the dataset (explicit VR little endian), without the file meta header, which the
    receiver rewrites (its own implementation UID, the negotiated transfer syntax)."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = dcmread(io.BytesIO(data))
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return hashlib.sha256(out.getvalue()).hexdigest()


class Validator:
    def __init__(self, target: Target):
        self.t = target
        self.results: list[Result] = []
        self.context = ssl.create_default_context(cafile=str(target.ca))
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.instance_id = ""
        self.attachment_uuid = ""

    def check(self, name: str, fn: Callable[[], str]) -> bool:
        try:
            self.results.append(Result(name, True, fn()))
            return True
        except Exception as exc:  # noqa: BLE001 - every failure becomes a FAIL line
            self.results.append(Result(name, False, str(exc) or exc.__class__.__name__))
            return False

    def rest(
        self, path: str, auth: tuple[str, str] | None, method: str = "GET", data: bytes | None = None
    ) -> tuple[int, bytes]:
        url = f"https://{self.t.host}:{self.t.https_port}{path}"
        request = urllib.request.Request(url, method=method, data=data)  # noqa: S310 - https only
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=60) as response:  # noqa: S310
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    @property
    def auth(self) -> tuple[str, str]:
        return self.t.user, self.t.password

    # -- checks --------------------------------------------------------------------------------
    def tls(self) -> str:
        import socket

        with socket.create_connection((self.t.host, self.t.https_port), timeout=15) as raw:
            with self.context.wrap_socket(raw, server_hostname=self.t.host) as tls:
                cipher = (tls.cipher() or ("?",))[0]
                return f"{tls.version()} {cipher}, certificate trusted by {self.t.ca.name}"

    def refuses_anonymous(self) -> str:
        status, _ = self.rest("/system", None)
        if status != 401:
            raise AssertionError(f"expected 401 without credentials, got {status}")
        status, _ = self.rest("/system", (self.t.user, self.t.password + "-wrong"))
        if status != 401:
            raise AssertionError(f"expected 401 with a wrong password, got {status}")
        return "401 without credentials and with a wrong password"

    def rest_with_credentials(self) -> str:
        status, body = self.rest("/system", self.auth)
        if status != 200:
            raise AssertionError(f"GET /system with the site credentials answered {status}")
        system = json.loads(body)
        if system.get("DicomAet") != self.t.ae_title:
            raise AssertionError(f"server AE title is {system.get('DicomAet')!r}, expected {self.t.ae_title!r}")
        return f"Orthanc {system.get('Version')}, AE title {system['DicomAet']}"

    def _associate(self, contexts: list[str]):
        from pynetdicom import AE

        ae = AE(ae_title="ORTHWEBCHECK")
        for context in contexts:
            ae.add_requested_context(context)
        assoc = ae.associate(
            self.t.host, self.t.dicom_port, ae_title=self.t.ae_title, tls_args=(self.context, self.t.host)
        )
        if not assoc.is_established:
            raise AssertionError("association over DICOM TLS refused or failed")
        return assoc

    def echo(self) -> str:
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        assoc = self._associate([Verification])
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status or status.Status != 0:
            raise AssertionError(f"C-ECHO status {getattr(status, 'Status', None)}")
        return f"C-ECHO over TLS to {self.t.ae_title}@{self.t.host}:{self.t.dicom_port}"

    def store(self) -> str:
        from pydicom import dcmread
        from pydicom.uid import SecondaryCaptureImageStorage

        self.sent, self.sop_uid = make_test_instance()
        assoc = self._associate([SecondaryCaptureImageStorage])
        try:
            status = assoc.send_c_store(dcmread(io.BytesIO(self.sent)))
        finally:
            assoc.release()
        if not status or status.Status != 0:
            raise AssertionError(f"C-STORE status {getattr(status, 'Status', None)}")
        return f"C-STORE over TLS of test instance {self.sop_uid}"

    def read_back(self) -> str:
        request_status, found = self._lookup()
        if request_status != 200 or not found:
            raise AssertionError(f"instance {self.sop_uid} not found through REST ({request_status})")
        self.instance_id = found
        status, body = self.rest(f"/instances/{found}/file", self.auth)
        if status != 200:
            raise AssertionError(f"download answered {status}")
        if dataset_digest(body) != dataset_digest(self.sent):
            raise AssertionError("the downloaded instance differs from the one sent")
        _, info = self.rest(f"/instances/{found}/attachments/dicom/info", self.auth)
        self.attachment_uuid = json.loads(info).get("Uuid", "")
        return f"instance {found} downloaded over HTTPS, content identical"

    def _lookup(self) -> tuple[int, str]:
        status, body = self.rest("/tools/lookup", self.auth, method="POST", data=self.sop_uid.encode())
        hits = [h for h in json.loads(body) if h.get("Type") == "Instance"] if status == 200 else []
        return status, hits[0]["ID"] if hits else ""

    def _s3(self):
        import boto3

        kwargs: dict[str, Any] = {"region_name": self.t.region}
        if self.t.s3_endpoint:
            kwargs["endpoint_url"] = self.t.s3_endpoint
        return boto3.client("s3", **kwargs)

    def object_in_bucket(self) -> str:
        keys = [o["Key"] for o in self._s3().list_objects_v2(Bucket=self.t.bucket).get("Contents", [])]
        matching = [k for k in keys if self.attachment_uuid and self.attachment_uuid in k]
        if not matching:
            raise AssertionError(f"no object for attachment {self.attachment_uuid} in {self.t.bucket}")
        return f"object {matching[0]} in bucket {self.t.bucket}"

    def row_in_database(self) -> str:
        """The instance's row in Orthanc's index (run where the database is reachable, e.g. on the host)."""
        import subprocess

        sql = "select count(*) from resources where publicid = :'id'"
        proc = subprocess.run(
            ["psql", "-X", "-q", "-t", "-A", "-v", f"id={self.instance_id}", self.t.database_uri],
            input=sql,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0 or proc.stdout.strip() != "1":
            raise AssertionError(
                f"no index row for {self.instance_id}: {proc.stdout.strip()} {proc.stderr.strip()[:200]}"
            )
        return f"index row for {self.instance_id} in PostgreSQL"

    def cleanup(self) -> str:
        status, _ = self.rest(f"/instances/{self.instance_id}", self.auth, method="DELETE")
        if status != 200:
            raise AssertionError(f"DELETE answered {status}")
        if self.t.bucket:
            keys = [o["Key"] for o in self._s3().list_objects_v2(Bucket=self.t.bucket).get("Contents", [])]
            if any(self.attachment_uuid in k for k in keys):
                raise AssertionError("the test instance's object is still in the bucket after delete")
        return "test instance deleted" + (" and its object removed" if self.t.bucket else "")

    def run(self) -> list[Result]:
        if not self.check("HTTPS with the site CA", self.tls):
            return self.results
        self.check("REST refuses missing or wrong credentials", self.refuses_anonymous)
        self.check("REST with the site credentials", self.rest_with_credentials)
        self.check("DICOM C-ECHO over TLS", self.echo)
        if self.check("DICOM C-STORE over TLS", self.store) and self.check("stored instance read back", self.read_back):
            if self.t.bucket:
                self.check("DICOM object in the S3 bucket", self.object_in_bucket)
            if self.t.database_uri:
                self.check("index row in PostgreSQL", self.row_in_database)
            self.check("test instance removed", self.cleanup)
        return self.results


def parse(argv: list[str]) -> tuple[Target, bool]:
    p = argparse.ArgumentParser(prog="python -m tools.ops.validate", description=__doc__.split("\n")[0])
    p.add_argument("--host", help="site DNS name or address (or use --outputs)")
    p.add_argument("--outputs", type=Path, help="JSON of `terraform output -json` / `cdktf output --outputs-file`")
    p.add_argument("--https-port", type=int, default=HTTPS_PORT)
    p.add_argument("--dicom-port", type=int, default=DICOM_TLS_PORT)
    p.add_argument("--aet", default=DEFAULT_AE_TITLE, help="called AE title of the site")
    p.add_argument("--ca", type=Path, required=True, help="PEM file of the site CA (or the public CA)")
    p.add_argument("--user", default=ORTHANC_ADMIN_USER)
    p.add_argument("--password-file", type=Path, required=True, help="file holding the password (not an argument)")
    p.add_argument("--bucket", default="", help="also check the object in this S3 bucket")
    p.add_argument("--s3-endpoint", default="", help=argparse.SUPPRESS)
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--database-uri-file", type=Path, help="file holding a libpq URI of the index database (optional)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    a = p.parse_args(argv)
    host = a.host
    if a.outputs:
        outputs = json.loads(a.outputs.read_text())
        outputs = next(iter(outputs.values())) if "site_url" not in outputs and len(outputs) == 1 else outputs
        value = outputs["site_url"]["value"] if isinstance(outputs["site_url"], dict) else outputs["site_url"]
        host = host or value.removeprefix("https://").rstrip("/")
    if not host:
        p.error("--host: give the site address, or --outputs with the stack outputs")
    for name in ("ca", "password_file"):
        if not getattr(a, name).is_file():
            p.error(f"--{name.replace('_', '-')}: {getattr(a, name)} is not a readable file")
    password = a.password_file.read_text().strip()
    database_uri = a.database_uri_file.read_text().strip() if a.database_uri_file else ""
    target = Target(
        host, a.https_port, a.dicom_port, a.aet, a.ca, a.user, password, a.bucket, a.s3_endpoint, a.region, database_uri
    )
    return target, a.json


def main(argv: list[str] | None = None) -> int:
    target, as_json = parse(sys.argv[1:] if argv is None else argv)
    results = Validator(target).run()
    ok = all(r.ok for r in results)
    if as_json:
        print(json.dumps({"ok": ok, "checks": [asdict(r) for r in results]}, indent=1))
    else:
        for r in results:
            print(f"{'PASS' if r.ok else 'FAIL'}  {r.name}: {r.detail}")
        print(f"{'site OK' if ok else 'site NOT OK'}: {sum(r.ok for r in results)}/{len(results)} checks passed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
