"""End to end on the local site with DICOM client certificates required (``dicom_client_auth =
certificate``): certificates issued and revoked with the operator command, refused and accepted by
the real nginx in front of the real Orthanc, with dcmtk and pynetdicom; nginx keeps serving when the
refresh replaces Orthanc; C-MOVE reaches a configured modality."""

from __future__ import annotations

import io
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from config import ROOT
from config.inputs import DicomModality
from tests.readme_lines import PROGRAMS, fill, readme_lines
from tools.harness.localsite import LocalSite
from tools.harness.pki import Certificate, make_ca, make_server_cert
from tools.ops.validate import make_test_instance
from tools.proc import free_ports, stop_process, wait_for_port

pytestmark = pytest.mark.e2e
PACS = "PACS"
TLS_PACS = "TLSPACS"


@pytest.fixture(scope="module")
def pacs_port() -> int:
    return free_ports(1)[0]


@pytest.fixture(scope="module")
def tls_pacs(tmp_path_factory) -> tuple[int, Certificate, Certificate, Certificate]:
    """A PACS that speaks only DICOM TLS: its port, its certificate and the CA that signed it (the
    site's modality_ca_file), and a certificate of another CA (an impostor)."""
    folder = tmp_path_factory.mktemp("tls-pacs")
    ca = make_ca(folder / "ca", "Hospital modality CA")
    impostor = make_server_cert(folder / "other", make_ca(folder / "other", "Another CA"), "impostor")
    return free_ports(1)[0], make_server_cert(folder / "ca", ca, "pacs"), ca, impostor


@pytest.fixture(scope="module")
def site(tmp_path_factory, pacs_port, tls_pacs):
    tls_port, _, modality_ca, _ = tls_pacs
    s = LocalSite(
        tmp_path_factory.mktemp("site"),
        dicom_client_auth="certificate",
        modalities=(
            DicomModality(PACS, "127.0.0.1", pacs_port, ("echo", "find", "move", "store")),
            DicomModality(TLS_PACS, "127.0.0.1", tls_port, ("echo", "store"), tls=True),
        ),
        modality_ca=modality_ca.cert.read_text(),
    ).start()
    yield s
    s.stop()


def modalities(site: LocalSite, *args: str) -> subprocess.CompletedProcess:
    """The operator command, as an operator runs it (against the emulator here)."""
    env = {**os.environ, **{k: v for k, v in site.emulator.client_env().items() if k != "AWS_ENDPOINT_URL"}}
    return subprocess.run(
        [sys.executable, "-m", "tools.ops.modalities", "--site", site.name, "--region", site.region,
         "--endpoint-url", site.emulator.endpoint, *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def certs(site, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    for modality in ("CT1", PACS, "OLDCT"):
        issued = modalities(site, "issue", modality, "--out", str(out))
        assert issued.returncode == 0, issued.stdout + issued.stderr
    site.refresh()  # the host picks the client CA and CRL up on its next refresh
    return out


def context(site: LocalSite, certs: Path | None = None, modality: str = "") -> ssl.SSLContext:
    ctx = site.tls_context()
    if certs and modality:
        ctx.load_cert_chain(str(certs / f"{modality}.crt"), str(certs / f"{modality}.key"))
    return ctx


def pynetdicom_store(site: LocalSite, ctx: ssl.SSLContext, calling: str = "CT1") -> int | None:
    from pydicom import dcmread
    from pydicom.uid import SecondaryCaptureImageStorage
    from pynetdicom import AE

    data, _ = make_test_instance()
    ae = AE(ae_title=calling)
    ae.add_requested_context(SecondaryCaptureImageStorage)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", site.ports["dicom_tls"], ae_title=site.ae_title, tls_args=(ctx, "localhost"))
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(dcmread(io.BytesIO(data)))
    finally:
        if assoc.is_established:
            assoc.release()
    return getattr(status, "Status", None)


def dcmtk_store(site: LocalSite, tmp_path: Path, certs: Path | None, modality: str = "") -> subprocess.CompletedProcess:
    data, _ = make_test_instance()
    path = tmp_path / "one.dcm"
    path.write_bytes(data)
    tls = ["+tls", str(certs / f"{modality}.key"), str(certs / f"{modality}.crt")] if certs else ["+tla"]
    return subprocess.run(
        ["storescu", *tls, "+cf", str(site.ca_path), "-aet", modality or "CT1", "-aec", site.ae_title,
         "127.0.0.1", str(site.ports["dicom_tls"]), str(path)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip


def test_no_client_certificate_no_dicom(site, certs, tmp_path):
    """The AE title is not a credential: without a certificate nothing is stored, whatever the AE title."""
    assert pynetdicom_store(site, context(site), calling=PACS) is None
    refused = dcmtk_store(site, tmp_path, None)
    assert refused.returncode != 0


def test_an_issued_certificate_stores_with_dcmtk_and_pynetdicom(site, certs, tmp_path):
    assert pynetdicom_store(site, context(site, certs, "CT1")) == 0
    stored = dcmtk_store(site, tmp_path, certs, "CT1")
    assert stored.returncode == 0, stored.stdout + stored.stderr
    # The README's lines for a modality with its certificate, as written there.
    path = tmp_path / "readme.dcm"
    path.write_bytes(make_test_instance()[0])
    lines = [line for program in PROGRAMS for line in readme_lines(program) if "+tls CT1.key CT1.crt" in line]
    assert lines, "the README shows the storescu line with a client certificate"
    for line in lines:
        argv, env = fill(line, ca=str(site.ca_path), host="127.0.0.1", port=site.ports["dicom_tls"], files=[str(path)],
                         certs=str(certs))  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
        assert done.returncode == 0, f"README line {line!r}: {done.stdout}{done.stderr}"
    # Each association is logged with the certificate it presented (the front door's audit trail;
    # a scaled site's load balancer passes TCP through and logs nothing of its own).
    log = (site.workdir / "nginx" / "access.log").read_text()
    entries = [json.loads(line) for line in log.splitlines()]  # every line is one JSON object
    lines = [
        e for e in entries if e["kind"] == "dicom-tls" and e["status"] == 200 and "CN=CT1" in e["client_certificate"]
    ]
    assert len(lines) >= 2, log[-2000:]
    assert all(isinstance(e["status"], int) for e in entries), "the 5xx alarm filters on a numeric status"


def test_a_revoked_certificate_is_refused_after_the_refresh(site, certs, tmp_path):
    assert dcmtk_store(site, tmp_path, certs, "OLDCT").returncode == 0, "good before revocation"
    revoked = modalities(site, "revoke", "OLDCT")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    log = site.refresh()
    assert "client-crl.pem" in log
    assert dcmtk_store(site, tmp_path, certs, "OLDCT").returncode != 0
    assert pynetdicom_store(site, context(site, certs, "OLDCT")) is None
    assert pynetdicom_store(site, context(site, certs, "CT1")) == 0, "the others still work"


def test_nginx_keeps_serving_when_the_refresh_replaces_orthanc(site, certs):
    """A credential change makes the refresh replace Orthanc; nginx must answer on both ports after."""
    admin = site.admin()
    new_pw = "rotated-" + os.urandom(12).hex()
    site.pg.psql_superuser(f"ALTER ROLE orthanc PASSWORD '{new_pw}'")
    site.sm.put_secret_value(SecretId=site.arns["admin"], SecretString=json.dumps({**admin, "db_password": new_pw}))
    old_pid = site.processes["orthanc"].pid
    log = site.refresh()
    assert "db-connection-uri" in log and site.processes["orthanc"].pid != old_pid
    status, body = site.rest("/system", auth=("admin", admin["password"]))
    assert status == 200 and json.loads(body)["DicomAet"] == site.ae_title
    assert pynetdicom_store(site, context(site, certs, "CT1")) == 0


def store_and_move(site: LocalSite, certs: Path, destination: str) -> tuple[list[int], str]:
    """As the PACS (over the front door, with its certificate): C-STORE a new study, then C-MOVE it
    to ``destination``; the C-MOVE statuses and the instance's SOP Instance UID."""
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.uid import SecondaryCaptureImageStorage
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

    data, sop_uid = make_test_instance()
    ds = dcmread(io.BytesIO(data))
    ae = AE(ae_title=PACS)
    ae.add_requested_context(SecondaryCaptureImageStorage)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(
        "127.0.0.1", site.ports["dicom_tls"], ae_title=site.ae_title, tls_args=(context(site, certs, PACS), "localhost")
    )
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0
        query = Dataset()
        query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", ds.StudyInstanceUID
        move = assoc.send_c_move(query, destination, StudyRootQueryRetrieveInformationModelMove)
        return [s.Status for s, _ in move if s], sop_uid
    finally:
        assoc.release()


def received_files(folder: Path, timeout: float = 30) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not list(folder.iterdir()):
        time.sleep(0.2)
    return list(folder.iterdir())


def storescp(port: int, aet: str, received: Path, *tls: str) -> subprocess.Popen:
    """dcmtk's storescp on ``port`` (``tls``: its +tls options), with the files it receives in ``received``."""
    received.mkdir(exist_ok=True)
    process = subprocess.Popen(
        ["storescp", *tls, "-aet", aet, "-od", str(received), "+B", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip
    wait_for_port(port, process=process)
    return process


def assert_moved(site: LocalSite, certs: Path, aet: str, port: int, received: Path, *tls: str) -> None:
    """A C-MOVE to ``aet`` succeeds and a storescp on ``port`` (with ``tls`` options) receives the study."""
    from pydicom import dcmread

    process = storescp(port, aet, received, *tls)
    try:
        statuses, sop_uid = store_and_move(site, certs, aet)
        assert statuses[-1] == 0x0000, [hex(s) for s in statuses]
        files = received_files(received)
        assert len(files) == 1 and dcmread(files[0]).SOPInstanceUID == sop_uid
    finally:
        stop_process(process)


def test_c_move_reaches_a_configured_modality(site, certs, pacs_port, tmp_path):
    """Orthanc opens a new association to the modality's address and port (the host's egress rule
    in production); here a real dcmtk storescp stands where the PACS would be."""
    assert_moved(site, certs, PACS, pacs_port, tmp_path / "received")


def test_c_move_to_a_tls_modality_goes_over_dicom_tls(site, certs, tls_pacs, tmp_path):
    """A modality with tls: Orthanc's C-MOVE association is DICOM TLS. The PACS (dcmtk storescp)
    speaks only TLS and asks for a client certificate it checks against the site CA: Orthanc
    presents the one the host issued it. Orthanc checks the PACS against modality_ca_file: a PACS
    whose certificate comes from another CA gets nothing."""
    port, pacs_cert, _, impostor = tls_pacs
    trust = ("+cf", str(site.ca_path), "--require-peer-cert")
    assert_moved(
        site, certs, TLS_PACS, port, tmp_path / "received", "+tls", str(pacs_cert.key), str(pacs_cert.cert), *trust
    )

    refused = tmp_path / "impostor"
    process = storescp(port, TLS_PACS, refused, "+tls", str(impostor.key), str(impostor.cert), *trust)
    try:
        statuses, _ = store_and_move(site, certs, TLS_PACS)
        assert statuses[-1] != 0x0000, "Orthanc sent the study to a PACS whose certificate it cannot trust"
        assert received_files(refused, timeout=3) == []
    finally:
        stop_process(process)


def test_local_up_checks_dicom_refuses_a_client_without_certificate(site):
    line = site.verify()[-1]
    assert line.startswith(f"DICOM TLS 127.0.0.1:{site.ports['dicom_tls']}") and "refuses a client without" in line
