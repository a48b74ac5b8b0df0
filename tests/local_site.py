"""What the end-to-end tests ask of a local site (tools/harness/localsite.py): its admin login,
lookups in Orthanc and the bucket, DICOM sends and the validator run as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from config import ROOT
from tools.harness.dicom_sender import send
from tools.harness.localsite import LocalSite


def auth(s: LocalSite) -> tuple[str, str]:
    return "admin", s.admin()["password"]


def lookup(s: LocalSite, sop_uid: str) -> str:
    status, body = s.rest("/tools/lookup", auth=auth(s), method="POST", data=sop_uid.encode())
    assert status == 200
    hits = [h["ID"] for h in json.loads(body) if h["Type"] == "Instance"]
    return hits[0] if hits else ""


def object_keys(s: LocalSite) -> set[str]:
    pages = s.s3.get_paginator("list_objects_v2").paginate(Bucket=s.bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def dcm_objects(s: LocalSite) -> set[str]:
    # One DICOM object per instance (Orthanc may add a ".dcm.head" attachment, the header up to the pixels).
    return {k for k in object_keys(s) if k.endswith(".dcm")}


def count_instances(s: LocalSite, host: int = 0) -> int:
    status, body = s.rest("/statistics", auth=auth(s), host=host)
    assert status == 200
    return int(json.loads(body)["CountInstances"])


def attachment_uuid(s: LocalSite, instance: str) -> str:
    status, body = s.rest(f"/instances/{instance}/attachments/dicom/info", auth=auth(s))
    assert status == 200
    return json.loads(body)["Uuid"]


def dataset_bytes(data: bytes) -> bytes:
    """The bytes after the file meta header (which Orthanc writes itself)."""
    assert data[128:132] == b"DICM"
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, explicit VR
    return data[144 + group_length :]


def send_site(s: LocalSite, instances, **kwargs):
    return send("127.0.0.1", s.ports["dicom_tls"], s.ae_title, str(s.ca_path), instances, **kwargs)


def run_validator(site: LocalSite, ca: Path, password: str, tmp_path: Path, *extra: str):
    pw = tmp_path / "pw"
    pw.write_text(password)
    args = [
        "--host",
        "127.0.0.1",
        "--https-port",
        str(site.ports["https"]),
        "--dicom-port",
        str(site.ports["dicom_tls"]),
        "--ca",
        str(ca),
        "--password-file",
        str(pw),
        *extra,
    ]
    env = {**os.environ, **{k: v for k, v in site.emulator.client_env().items() if k != "AWS_ENDPOINT_URL"}}
    return run_command("tools.ops.validate", args, env, timeout=120)


def run_command(
    module: str, args: list[str], env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """An operator command (``python -m module``) as a separate program, from the checkout."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env
    )


def stored(s: LocalSite) -> dict[str, str]:
    """SOPInstanceUID -> attachment UUID, straight from Orthanc's index in PostgreSQL."""
    rows = s.pg.psql_superuser(
        "select m.value, a.uuid from maindicomtags m join attachedfiles a on a.id = m.id "
        "where m.taggroup = 8 and m.tagelement = 24 and a.filetype = 1"
    )
    return dict(line.split("|", 1) for line in rows.splitlines() if line)


def all_present(s: LocalSite, uids: list[str]) -> list[str]:
    """The UIDs missing from the PostgreSQL index, or whose object is missing from the bucket."""
    index, keys = stored(s), object_keys(s)
    return [uid for uid in uids if uid not in index or not any(index[uid] in k for k in keys)]
