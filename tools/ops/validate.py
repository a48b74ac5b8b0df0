"""Orthweb site validator: is a deployed (or local) site working, safely, end to end?

    python -m tools.ops.validate [--json]            the site this checkout deployed (make validate)
    python -m tools.ops.validate --local [--json]    the site make local-up started (make validate SITE=local)
    python -m tools.ops.validate --outputs outputs.json
    python -m tools.ops.validate --host <site> --ca orthweb-ca.pem --password-file pw.txt

Without --host, the validator reads the stack's outputs itself (``terraform output -json`` in the
synthesized stack folder, whatever backend holds the state; or the given file), and fetches the
admin password and the CA certificate from the secrets those outputs name, with your AWS
credentials, in the site's region. The password stays in memory and the CA certificate in a private
temporary folder removed on exit; neither is printed. ``--ca`` and ``--password-file`` override
what the secrets say.

Checks, in order: HTTPS with the site CA (TLS 1.2+), REST refuses a request without credentials
and one with a wrong password, REST answers with the site credentials and the AE title matches,
C-ECHO and C-STORE over DICOM TLS with a generated test instance, the stored instance is read back
through REST with the same content and through DICOMweb (QIDO-RS finds it, WADO-RS returns it
identical), and the object in the S3 bucket; finally the test instance is
deleted (and its object is gone). Prints a checklist; exit code 0 when every check passes, 1
otherwise (a site that cannot be reached or read included), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from config import ROOT
from config.facts import DEFAULT_AE_TITLE, DICOM_TLS_PORT, DICOMWEB_ROOT, HTTPS_PORT, ORTHANC_ADMIN_USER
from tools.ops.orthanc_http import OrthancHttp, tls_context
from tools.ops.site import (
    LOCAL_SITE_STATE,
    NoCredentials,
    NoOutputs,
    SiteUnreadable,
    deployed_outputs,
    output_values,
)

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
    ca: Path | None  # None: the system's trusted CAs (your own, publicly trusted certificate)
    user: str
    password: str
    bucket: str = ""
    s3_endpoint: str = ""
    region: str = "us-east-1"
    database_uri: str = ""
    # With DICOM client certificates required (dicom_client_auth = "certificate"): one issued for
    # the validator (make modality-cert), presented on the DICOM port.
    client_cert: Path | None = None
    client_key: Path | None = None


def secondary_capture(
    *, study: str, series: str, patient_name: str, patient_id: str, number: int | None = None
) -> tuple[bytes, str]:
    """A small, valid Secondary Capture instance (16x16 pixels, fresh SOP Instance UID) of the
    given study and series; returns (file bytes, SOPInstanceUID)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.Modality = patient_name, patient_id, "OT"
    if number is not None:
        ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(range(256))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), str(ds.SOPInstanceUID)


def make_test_instance() -> tuple[bytes, str]:
    """The validator's test instance: its own new study, of the validation patient."""
    from pydicom.uid import generate_uid

    return secondary_capture(
        study=generate_uid(), series=generate_uid(), patient_name=TEST_PATIENT, patient_id="ORTHWEB-VALIDATION"
    )


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of a multipart/related message (RFC 2046), headers stripped."""
    import re

    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not found:
        return []
    delimiter = b"--" + found.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, content = chunk.partition(b"\r\n\r\n")
        parts.append(content.removesuffix(b"\r\n"))
    return parts


def dataset_digest(data: bytes) -> str:
    """SHA-256 of the dataset (its tags and values' bytes, written as implicit VR little endian),
    without the file meta header, which the receiver rewrites (its own implementation UID, the
    negotiated transfer syntax). Implicit VR, as the receiver may store it (Debian 13's Orthanc 1.12
    takes implicit VR where 1.10 took explicit): read back, Pixel Data sent as OB reads as OW."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = dcmread(io.BytesIO(data))
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    write_dataset(out, ds)
    return hashlib.sha256(out.getvalue()).hexdigest()


class Validator:
    def __init__(self, target: Target):
        self.t = target
        self.results: list[Result] = []
        self.context = tls_context(target.ca, target.client_cert, target.client_key)
        self.http = OrthancHttp(f"https://{target.host}:{target.https_port}", context=self.context)
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
        answer = self.http.request(path, method=method, data=data, auth=auth, anonymous=auth is None)
        return answer.status, answer.body

    @property
    def auth(self) -> tuple[str, str]:
        return self.t.user, self.t.password

    # -- checks --------------------------------------------------------------------------------
    def tls(self) -> str:
        import socket

        with socket.create_connection((self.t.host, self.t.https_port), timeout=15) as raw:
            with self.context.wrap_socket(raw, server_hostname=self.t.host) as tls:
                cipher = (tls.cipher() or ("?",))[0]
                trust = f"the site CA ({self.t.ca.name})" if self.t.ca else "the system's CAs"
                return f"{tls.version()} {cipher}, certificate trusted by {trust}"

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

    def dicomweb(self) -> str:
        """QIDO-RS finds the test instance and WADO-RS returns it, content identical, through the front door."""
        from pydicom import dcmread

        sent = dcmread(io.BytesIO(self.sent))
        study, series = str(sent.StudyInstanceUID), str(sent.SeriesInstanceUID)
        status, body = self.rest(f"{DICOMWEB_ROOT}studies?StudyInstanceUID={study}", self.auth)
        found = json.loads(body) if status == 200 and body else []
        if status != 200 or len(found) != 1:
            raise AssertionError(f"QIDO-RS for the test study answered {status} with {len(found)} match(es)")
        path = f"{DICOMWEB_ROOT}studies/{study}/series/{series}/instances/{self.sop_uid}"
        status, parts = self.rest_multipart(path)
        if status != 200 or len(parts) != 1:
            raise AssertionError(f"WADO-RS answered {status} with {len(parts)} part(s)")
        if dataset_digest(parts[0]) != dataset_digest(self.sent):
            raise AssertionError("the instance WADO-RS returned differs from the one sent")
        return f"QIDO-RS found the test study, WADO-RS returned the instance identical ({DICOMWEB_ROOT})"

    def rest_multipart(self, path: str) -> tuple[int, list[bytes]]:
        """GET a WADO-RS resource as multipart/related application/dicom; the parts' bodies."""
        accept = {"Accept": 'multipart/related; type="application/dicom"'}
        answer = self.http.request(path, auth=self.auth, headers=accept)
        if answer.status >= 400:
            return answer.status, []
        return answer.status, multipart_parts(answer.headers.get("Content-Type", ""), answer.body)

    def _lookup(self) -> tuple[int, str]:
        status, body = self.rest("/tools/lookup", self.auth, method="POST", data=self.sop_uid.encode())
        hits = [h for h in json.loads(body) if h.get("Type") == "Instance"] if status == 200 else []
        return status, hits[0]["ID"] if hits else ""

    def _s3(self) -> Any:
        from tools.ops.site import client

        return client("s3", self.t.region, self.t.s3_endpoint or None)

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
            self.check("DICOMweb QIDO-RS and WADO-RS", self.dicomweb)
            if self.t.bucket:
                self.check("DICOM object in the S3 bucket", self.object_in_bucket)
            if self.t.database_uri:
                self.check("index row in PostgreSQL", self.row_in_database)
            self.check("test instance removed", self.cleanup)
        return self.results


def site_secrets(outputs: dict[str, Any], endpoint_url: str | None, folder: Path) -> tuple[str, Path | None]:
    """(admin password, CA file) from the secrets the outputs name. The CA file is written in ``folder``."""
    from botocore.exceptions import BotoCoreError, ClientError

    from tools.ops.site import client, require_credentials

    missing = [k for k in ("admin_secret", "ca_secret", "region") if k not in outputs]
    if missing:
        raise NoOutputs(f"the outputs lack {', '.join(missing)}: deploy this version of the stack first")
    require_credentials(endpoint_url)
    secrets = client("secretsmanager", outputs["region"], endpoint_url)
    try:
        admin = json.loads(secrets.get_secret_value(SecretId=outputs["admin_secret"])["SecretString"])
        ca_path = None
        if outputs["ca_secret"]:
            ca = json.loads(secrets.get_secret_value(SecretId=outputs["ca_secret"])["SecretString"])
            ca_path = folder / "site-ca.pem"
            ca_path.write_text(ca["ca_cert"])
    except (BotoCoreError, ClientError, KeyError, ValueError) as exc:
        # The exception names the secret and the error code, never a value.
        raise SiteUnreadable(f"cannot read the site's secrets: {exc.__class__.__name__}: {exc}") from exc
    return str(admin["password"]), ca_path


def _port(value: str, default: int) -> int:
    _, _, port = value.rpartition(":")
    return int(port) if port.isdigit() else default


def arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.ops.validate", description=__doc__.split("\n")[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--host", help="site DNS name or address (give --ca unless publicly trusted, --password-file)")
    where.add_argument("--outputs", type=Path, help="JSON of `terraform output -json` / `cdktf output --outputs-file`")
    where.add_argument("--local", action="store_true", help="the site `make local-up` started")
    p.add_argument("--https-port", type=int, help=f"HTTPS port (default: from the outputs, else {HTTPS_PORT})")
    p.add_argument("--dicom-port", type=int, help=f"DICOM TLS port (default: from the outputs, else {DICOM_TLS_PORT})")
    p.add_argument("--aet", help=f"called AE title of the site (default: from the outputs, else {DEFAULT_AE_TITLE})")
    p.add_argument("--ca", type=Path, help="PEM file of the CA to trust (default: the site CA from its secret)")
    p.add_argument("--user", default=ORTHANC_ADMIN_USER)
    p.add_argument("--password-file", type=Path, help="file holding the password (default: the site's secret)")
    p.add_argument("--bucket", help="check the object in this S3 bucket (default: the outputs' bucket_name)")
    p.add_argument("--region", help="AWS region (default: from the outputs, else us-east-1)")
    p.add_argument("--database-uri-file", type=Path, help="file holding a libpq URI of the index database (optional)")
    p.add_argument("--client-cert", type=Path, help="DICOM client certificate (sites that require them)")
    p.add_argument("--client-key", type=Path, help="its key (a file, never an argument's value)")
    p.add_argument("--endpoint-url", help=argparse.SUPPRESS)  # the AWS API emulator (--local sets it)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def the_outputs(a: argparse.Namespace, p: argparse.ArgumentParser) -> tuple[dict[str, Any], str | None]:
    """(outputs, emulator endpoint or None): of the local site, a file, or the deployed stack; none with --host."""
    if a.local:
        if not LOCAL_SITE_STATE.is_file():
            raise NoOutputs("no local site is up: run make local-up first")
        state = json.loads(LOCAL_SITE_STATE.read_text())
        return output_values(json.loads(Path(state["outputs_file"]).read_text())), a.endpoint_url or state["emulator"]
    if a.outputs:
        return output_values(json.loads(a.outputs.read_text())), a.endpoint_url
    if a.host:
        return {}, a.endpoint_url
    from config.inputs import ConfigError
    from tools.ops.site import project_config

    try:
        name = project_config().name
    except ConfigError as exc:
        p.error("; ".join(exc.problems))
    return deployed_outputs(ROOT / "cdktf.out" / "stacks" / name), a.endpoint_url


def parse(argv: list[str], folder: Path) -> tuple[Target, bool]:
    """The target from the arguments; secrets and CA (fetched) land in ``folder`` (private, temporary)."""
    from urllib.parse import urlparse

    p = arguments()
    a = p.parse_args(argv)
    for name in ("ca", "password_file", "database_uri_file", "outputs", "client_cert", "client_key"):
        path = getattr(a, name)
        if path is not None and not path.is_file():
            p.error(f"--{name.replace('_', '-')}: {path} is not a readable file")
    if bool(a.client_cert) != bool(a.client_key):
        p.error("--client-cert: give --client-cert and --client-key together")
    if a.host and a.password_file is None:
        p.error("--password-file: required with --host (or validate from the outputs, without --host)")
    outputs, endpoint_url = the_outputs(a, p)
    password, ca = "", a.ca
    if outputs and (a.password_file is None or a.ca is None):
        password, fetched_ca = site_secrets(outputs, endpoint_url, folder)
        ca = a.ca if a.ca is not None else fetched_ca
    if a.password_file is not None:
        password = a.password_file.read_text().strip()
    url = urlparse(outputs.get("site_url", ""))
    target = Target(
        host=a.host or url.hostname or "",
        https_port=a.https_port or url.port or HTTPS_PORT,
        dicom_port=a.dicom_port or _port(outputs.get("dicom_endpoint", ""), DICOM_TLS_PORT),
        ae_title=a.aet or outputs.get("ae_title") or DEFAULT_AE_TITLE,
        ca=ca,
        user=a.user,
        password=password,
        bucket=outputs.get("bucket_name", "") if a.bucket is None else a.bucket,
        s3_endpoint=endpoint_url or "",
        region=a.region or outputs.get("region") or "us-east-1",
        database_uri=a.database_uri_file.read_text().strip() if a.database_uri_file else "",
        client_cert=a.client_cert,
        client_key=a.client_key,
    )
    return target, a.json


def report(results: list[Result], as_json: bool) -> int:
    ok = bool(results) and all(r.ok for r in results)
    if as_json:
        print(json.dumps({"ok": ok, "checks": [asdict(r) for r in results]}, indent=1))
    else:
        for r in results:
            print(f"{'PASS' if r.ok else 'FAIL'}  {r.name}: {r.detail}")
        print(f"{'site OK' if ok else 'site NOT OK'}: {sum(r.ok for r in results)}/{len(results)} checks passed")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    import tempfile

    argv = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory(prefix="orthweb-validate-") as folder:
        try:
            target, as_json = parse(argv, Path(folder))
        except (NoCredentials, NoOutputs) as exc:
            print(f"validate: error: {exc}", file=sys.stderr)
            return 2
        except SiteUnreadable as exc:
            return report([Result("site outputs and secrets", False, str(exc))], "--json" in argv)
        return report(Validator(target).run(), as_json)


if __name__ == "__main__":
    sys.exit(main())
