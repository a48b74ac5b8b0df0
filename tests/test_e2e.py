"""End to end on the local site harness: real PostgreSQL (TLS only), the AWS API emulator, the real
bootstrap, Orthanc with its PostgreSQL plugin, the S3 storage STAND-IN (Python plugin), and nginx as
the TLS front door. No mocks: every check goes through the network path a PACS would use."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from config import ROOT
from tests.local_site import (
    all_present,
    attachment_uuid,
    auth,
    count_instances,
    dataset_bytes,
    dcm_objects,
    lookup,
    object_keys,
    run_validator,
    send_site,
    stored,
)
from tests.readme_lines import PROGRAMS, fill, readme_lines
from tools.harness.dicom_sender import make_instances
from tools.harness.localsite import LocalSite
from tools.ops.orthanc_http import OrthancHttp
from tools.ops.validate import make_test_instance
from tools.proc import alive, free_ports
from userdata.site import LOGIN_FAILURE_BURST

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = LocalSite(tmp_path_factory.mktemp("site")).start()
    yield s
    s.stop()


@pytest.fixture
def fresh_site(tmp_path):
    s = LocalSite(tmp_path / "site").start()
    yield s
    s.stop()


# -- the happy path -------------------------------------------------------------------------------


def test_dcmtk_echo_and_store_over_tls(site, tmp_path):
    """The dcmtk lines the README gives users, as written there (placeholders filled in)."""
    data, uid = make_test_instance()
    path = tmp_path / "one.dcm"
    path.write_bytes(data)
    assert site.ae_title == "ORTHANC", "the README's lines name the default AE title"
    lines = {program: [line for line in readme_lines(program) if "+tls" not in line] for program in PROGRAMS}
    assert len(lines["echoscu"]) >= 1 and len(lines["storescu"]) >= 2, lines
    for line in lines["echoscu"] + lines["storescu"]:
        argv, env = fill(line, ca=str(site.ca_path), host="127.0.0.1", port=site.ports["dicom_tls"], files=[str(path)])
        done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
        assert done.returncode == 0, f"README line {line!r}: {done.stdout}{done.stderr}"
    instance = lookup(site, uid)
    assert instance
    status, body = site.rest(f"/instances/{instance}/file", auth=auth(site))
    assert status == 200 and dataset_bytes(body) == dataset_bytes(data), "dataset bytes differ after the round trip"
    assert instance.replace("-", "").isalnum()
    rows = site.pg.psql_superuser(f"select count(*) from resources where publicid = '{instance}'")  # noqa: S608
    assert rows == "1", "the index row is in PostgreSQL"
    key = next(k for k in object_keys(site) if attachment_uuid(site, instance) in k)
    assert site.s3.get_object(Bucket=site.bucket, Key=key)["Body"].read() == body
    assert site.rest(f"/instances/{instance}", auth=auth(site), method="DELETE")[0] == 200
    assert key not in object_keys(site), "deleting the instance removes the object"


def test_pynetdicom_store_and_validator(site, tmp_path):
    uri_file = site.run / "secrets" / "db-connection-uri"  # the app role's URI, verify-full against the RDS CA
    proc = run_validator(
        site,
        site.ca_path,
        site.admin()["password"],
        tmp_path,
        "--bucket",
        site.bucket,
        "--endpoint-url",
        site.emulator.endpoint,
        "--database-uri-file",
        str(uri_file),
        "--json",
    )
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"], proc.stdout + proc.stderr
    names = [c["name"] for c in report["checks"]]
    assert names[-3:] == ["DICOM object in the S3 bucket", "index row in PostgreSQL", "test instance removed"]
    assert len(names) == 10 and "DICOMweb QIDO-RS and WADO-RS" in names


@pytest.mark.parametrize(
    "breakage,failing",
    [
        ("password", "REST with the site credentials"),
        ("certificate", "HTTPS with the site CA"),
    ],
)
def test_validator_fails_clearly(site, tmp_path, breakage, failing):
    from tools.harness.pki import make_ca

    password = "not-the-password" if breakage == "password" else site.admin()["password"]
    ca = make_ca(tmp_path / "other", "Some other CA").cert if breakage == "certificate" else site.ca_path
    proc = run_validator(site, ca, password, tmp_path)
    assert proc.returncode == 1
    assert f"FAIL  {failing}" in proc.stdout and "site NOT OK" in proc.stdout


def dicomweb(
    s: LocalSite, path: str, *, accept: str = "application/dicom+json", body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """One DICOMweb request through the site's TLS front door with the admin credential."""
    sent = {"Accept": accept, **{name.replace("_", "-"): value for name, value in headers.items()}}
    front = OrthancHttp(f"https://127.0.0.1:{s.ports['https']}", context=s.tls_context(), auth=auth(s))
    answer = front.request(f"/dicom-web/{path}", method="POST" if body else "GET", data=body, headers=sent)
    return answer.status, dict(answer.headers), answer.body


def test_dicomweb_stow_qido_wado_through_the_front_door(site):
    """What a web viewer or an AI pipeline does: STOW-RS an instance, find it with QIDO-RS, fetch it
    with WADO-RS (same dataset bytes), and every URL in the answers points at the front door (https,
    the address and port the client used), not at Orthanc's internal listener."""
    from pydicom import dcmread

    from tools.ops.validate import dataset_digest, multipart_parts

    data, sop_uid = make_test_instance()
    sent = dcmread(io.BytesIO(data))
    study, series = str(sent.StudyInstanceUID), str(sent.SeriesInstanceUID)
    boundary = "orthweb-stow-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    front_door = f"https://127.0.0.1:{site.ports['https']}/dicom-web/"

    # Without the credential the DICOMweb root is closed like the rest of the REST API.
    status, _ = site.rest(f"/dicom-web/studies?StudyInstanceUID={study}")
    assert status == 401

    status, _, answer = dicomweb(site, "studies", body=body, Content_Type=content_type)
    assert status == 200, answer
    stored = json.loads(answer)
    referenced = stored["00081199"]["Value"]  # ReferencedSOPSequence
    assert [item["00081155"]["Value"][0] for item in referenced] == [sop_uid]
    assert not stored.get("00081198", {}).get("Value"), "no failed SOP"
    retrieve_urls = [stored["00081190"]["Value"][0]] + [item["00081190"]["Value"][0] for item in referenced]
    assert all(url.startswith(front_door) for url in retrieve_urls), retrieve_urls

    status, _, answer = dicomweb(site, f"studies?StudyInstanceUID={study}")
    assert status == 200
    found = json.loads(answer)
    assert [f["0020000D"]["Value"][0] for f in found] == [study]
    assert found[0]["00081190"]["Value"][0] == f"{front_door}studies/{study}"

    status, _, answer = dicomweb(site, f"studies/{study}/series/{series}/instances")
    assert status == 200 and [i["00080018"]["Value"][0] for i in json.loads(answer)] == [sop_uid]

    status, headers, answer = dicomweb(
        site,
        f"studies/{study}/series/{series}/instances/{sop_uid}",
        accept='multipart/related; type="application/dicom"',
    )
    parts = multipart_parts(headers.get("Content-Type", ""), answer)
    assert status == 200 and len(parts) == 1
    assert dataset_digest(parts[0]) == dataset_digest(data), "WADO-RS returns the dataset that STOW-RS stored"

    # The same instance reached the S3 store (through the same plugin as DICOM C-STORE).
    instance = lookup(site, sop_uid)
    assert any(attachment_uuid(site, instance) in key for key in object_keys(site))
    assert site.rest(f"/instances/{instance}", auth=auth(site), method="DELETE")[0] == 200


# -- what must be refused -------------------------------------------------------------------------


def _tls_handshake(port: int, context: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.version() or ""


@pytest.mark.parametrize("port_name", ["https", "dicom_tls"])
def test_untrusted_certificate_and_old_tls_are_refused(site, tmp_path, port_name):
    port = site.ports[port_name]
    trusted = ssl.create_default_context(cafile=str(site.ca_path))
    assert _tls_handshake(port, trusted) in ("TLSv1.2", "TLSv1.3")
    from tools.harness.pki import make_ca

    other = ssl.create_default_context(cafile=str(make_ca(tmp_path / "x", "Not the site CA").cert))
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_handshake(port, other)
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        old.minimum_version = old.maximum_version = version
        with pytest.raises(ssl.SSLError):
            _tls_handshake(port, old)
    # Positive control: the same permissive client construction succeeds with TLS 1.2.
    modern = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    modern.check_hostname, modern.verify_mode = False, ssl.CERT_NONE
    modern.minimum_version = modern.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _tls_handshake(port, modern) == "TLSv1.2"


def test_plain_dicom_wrong_aet_and_unlisted_find_are_refused(site):
    from pynetdicom import AE
    from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind, Verification  # type: ignore

    context = ssl.create_default_context(cafile=str(site.ca_path))
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(Verification)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.network_timeout = 10
    plain = ae.associate("127.0.0.1", site.ports["dicom_tls"], ae_title=site.ae_title)
    assert not plain.is_established, "plain DICOM on the TLS port"
    wrong = ae.associate("127.0.0.1", site.ports["dicom_tls"], ae_title="NOTORTHANC", tls_args=(context, "localhost"))
    assert not wrong.is_established, "wrong called AE title"
    assoc = ae.associate("127.0.0.1", site.ports["dicom_tls"], ae_title=site.ae_title, tls_args=(context, "localhost"))
    assert assoc.is_established, "echo and store stay open to unknown modalities"
    assert assoc.send_c_echo().Status == 0
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel, query.PatientID = "PATIENT", "*"
    try:
        statuses = [
            getattr(status, "Status", None)
            for status, _ in assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind)
        ]
    except ValueError:  # the find context was not even accepted
        statuses = []
    if assoc.is_established:
        assoc.release()
    assert not any(s in (0x0000, 0xFF00, 0xFF01) for s in statuses), f"C-FIND answered {statuses}"


def test_rest_without_or_with_wrong_credentials_is_401(site):
    assert site.rest("/patients")[0] == 401
    assert site.rest("/patients", auth=("admin", "wrong"))[0] == 401
    assert site.rest("/patients", auth=("orthanc", "orthanc"))[0] == 401, "no default user"


def test_a_request_for_a_name_that_is_not_the_sites_is_refused(site):
    """A spoofed Host: header gets 421 and never reaches Orthanc, whose DICOMweb answers would build
    their RetrieveURLs from it; the site's own names (its certificate's) answer, and the health
    path answers any name (a balancer names the target's address)."""
    data, sop_uid = make_test_instance()
    status, answer = site.rest("/instances", auth=auth(site), method="POST", data=data)
    assert status == 200, answer
    instance = json.loads(answer)["ID"]
    try:
        for name in ("attacker.example", f"attacker.example:{site.ports['https']}", "localhost.attacker.example"):
            status, answer = site.rest("/dicom-web/studies", auth=auth(site), headers={"Host": name})
            assert status == 421 and b"attacker" not in answer, (name, status, answer[:300])
        for name in ("127.0.0.1", f"LOCALHOST:{site.ports['https']}"):
            status, answer = site.rest("/dicom-web/studies", auth=auth(site), headers={"Host": name})
            assert status == 200, (name, status, answer[:300])
            urls = [study["00081190"]["Value"][0] for study in json.loads(answer)]
            assert urls and all(url.startswith(f"https://{name}/") for url in urls), urls
        assert site.rest("/nginx-health", headers={"Host": "10.0.1.23"})[0] == 200
    finally:
        assert site.rest(f"/instances/{instance}", auth=auth(site), method="DELETE")[0] == 200


def test_failed_logins_are_limited_per_client_address(fresh_site):
    """Wrong passwords from one address: the first LOGIN_FAILURE_BURST + 1 get 401, the rest 429
    before reaching Orthanc; the right password still gets in at once, a request without any is not
    counted. A refresh that changes the password moves the limit with it."""
    s = fresh_site
    statuses = [s.rest("/system", auth=("admin", f"guess-{i}"))[0] for i in range(LOGIN_FAILURE_BURST + 6)]
    assert statuses == [401] * (LOGIN_FAILURE_BURST + 1) + [429] * 5, statuses
    assert s.rest("/system", auth=auth(s))[0] == 200
    assert s.rest("/system")[0] == 401
    logged = [json.loads(line) for line in (s.host().nginx_prefix / "access.log").read_text().splitlines()]
    assert sum(entry["status"] == 429 and entry["path"] == "/system" for entry in logged) == 5


# What someone holding a password would change to push the archive out or take the server down:
# a new modality, peer or DICOMweb server, a Lua script, a reset or shutdown, logging and DICOM
# settings. The forms Orthanc itself accepts for the same path (it normalizes //, %xx and a
# trailing /, and takes the method from X-HTTP-Method-Override on a POST) are refused too.
EVIL_MODALITY = json.dumps({"AET": "EVIL", "Host": "203.0.113.9", "Port": 104}).encode()
CONFIGURATION_WRITES = [
    ("PUT", "/modalities/evil", EVIL_MODALITY, {}),
    ("PUT", "/modalities/evil/", EVIL_MODALITY, {}),
    ("PUT", "//modalities/evil", EVIL_MODALITY, {}),
    ("PUT", "/%6dodalities/evil", EVIL_MODALITY, {}),
    ("POST", "/modalities/evil", EVIL_MODALITY, {"X-HTTP-Method-Override": "PUT"}),
    ("POST", "/modalities/evil?_method=PUT", EVIL_MODALITY, {}),
    ("DELETE", "/modalities/evil", None, {}),
    ("PUT", "/peers/evil", json.dumps({"Url": "https://203.0.113.9/"}).encode(), {}),
    ("PUT", "/dicom-web/servers/evil", json.dumps({"Url": "https://203.0.113.9/dicom-web/"}).encode(), {}),
    ("POST", "/tools/execute-script", b"print(1)", {}),
    ("PUT", "/tools/log-level", b"verbose", {}),
    ("PUT", "/tools/accepted-transfer-syntaxes", b'["*"]', {}),
    ("PUT", "/tools/unknown-sop-class-accepted", b"1", {}),
    ("POST", "/tools/reset", b"", {}),
    ("POST", "/tools/shutdown", b"", {}),
]


def test_the_front_door_refuses_configuration_writes(site):
    """403 at the front door with the admin password; Orthanc itself (reached on the host, as an
    operator would through Session Manager) takes the same write, and what OE2 and DICOMweb read
    still answers."""
    for method, path, body, headers in CONFIGURATION_WRITES:
        status, answer = site.rest(path, auth=auth(site), method=method, data=body, headers=headers)
        assert status == 403, f"{method} {path} {headers}: {status} {answer[:200]!r}"
    assert json.loads(site.rest("/modalities", auth=auth(site))[1]) == [], "a refused write reached Orthanc"
    for path in ("/modalities", "/peers", "/dicom-web/servers", "/tools/log-level", "/system"):
        assert site.rest(path, auth=auth(site))[0] == 200, path
    find = site.rest("/tools/find", auth=auth(site), method="POST", data=b'{"Level":"Study","Query":{}}')
    assert find[0] == 200, find
    assert site.rest("/modalities/evil", auth=auth(site), method="PUT", data=EVIL_MODALITY, direct=True)[0] == 200
    try:
        assert json.loads(site.rest("/modalities", auth=auth(site))[1]) == ["evil"]
    finally:
        assert site.rest("/modalities/evil", auth=auth(site), method="DELETE", direct=True)[0] == 200


# -- faults ---------------------------------------------------------------------------------------


def test_kill_9_during_ingest_loses_no_acknowledged_instance(fresh_site):
    instances = make_instances(200)
    killed = threading.Event()

    def kill_midway(index: int) -> None:
        if index == 60 and not killed.is_set():
            killed.set()
            fresh_site.kill_orthanc()

    report = send_site(fresh_site, instances, after_each=kill_midway)
    assert killed.is_set() and 60 <= len(report.acknowledged) < 200
    fresh_site.start_orthanc()
    assert all_present(fresh_site, report.acknowledged) == []
    resend = send_site(fresh_site, instances)
    assert len(resend.acknowledged) == 200
    assert all_present(fresh_site, [uid for _, uid in instances]) == []


def test_postgres_restart_during_ingest_recovers_without_manual_action(fresh_site):
    instances = make_instances(120)
    restarted = threading.Event()

    def restart_midway(index: int) -> None:
        if index == 40 and not restarted.is_set():
            restarted.set()
            fresh_site.pg.restart()

    report = send_site(fresh_site, instances, after_each=restart_midway)
    assert restarted.is_set()
    assert all_present(fresh_site, report.acknowledged) == []
    later = send_site(fresh_site, make_instances(20))
    assert len(later.acknowledged) == 20, "Orthanc accepts stores again, nobody restarted it"


def test_fresh_host_sees_every_study_and_presents_the_same_certificate(fresh_site):
    instances = make_instances(30)
    assert len(send_site(fresh_site, instances).acknowledged) == 30
    before = ssl.get_server_certificate(("127.0.0.1", fresh_site.ports["https"]))
    # The host is cattle: stop it, wipe its disk (config, runtime secrets, Orthanc scratch), boot again.
    fresh_site.stop_process("nginx")
    fresh_site.stop_process("orthanc")
    for folder in (fresh_site.run, fresh_site.workdir / "orthanc-db", fresh_site.workdir / "nginx"):
        shutil.rmtree(folder, ignore_errors=True)
    log = fresh_site.bootstrap()
    assert "generated a site CA" not in log
    fresh_site.start_orthanc()
    fresh_site.start_nginx()
    assert ssl.get_server_certificate(("127.0.0.1", fresh_site.ports["https"])) == before
    assert all_present(fresh_site, [uid for _, uid in instances]) == []


def test_db_password_rotation_is_followed(site):
    """On the module's site: the tests after this one run on the rotated password too."""
    admin = site.admin()
    new_pw = "rotated-" + os.urandom(12).hex()
    site.pg.psql_superuser(f"ALTER ROLE orthanc PASSWORD '{new_pw}'")
    site.sm.put_secret_value(SecretId=site.arns["admin"], SecretString=json.dumps({**admin, "db_password": new_pw}))
    log = site.refresh()  # what `orthweb-bootstrap refresh` does with docker compose on the host
    assert "runtime files changed: db-connection-uri" in log
    assert len(send_site(site, make_instances(10)).acknowledged) == 10


def test_four_concurrent_senders_store_every_instance_exactly_once(site):
    """On the module's site (no fresh one needed): counted as what these 400 instances add to it."""
    instances_before, keys_before, index_before = count_instances(site), dcm_objects(site), stored(site)
    batches = [make_instances(100) for _ in range(4)]
    reports = [None] * 4

    def run(i: int) -> None:
        reports[i] = send_site(site, batches[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert all(r is not None and len(r.acknowledged) == 100 for r in reports)
    assert count_instances(site) - instances_before == 400
    new_keys = dcm_objects(site) - keys_before
    assert len(new_keys) == 400
    all_uids = [uid for batch in batches for _, uid in batch]
    index = stored(site)
    assert len(index) - len(index_before) == 400 and all_present(site, all_uids) == []
    # Each instance indexed once, with its own new object.
    files = {index[uid] for uid in all_uids}
    assert len(files) == 400 and all(any(f in key for key in new_keys) for f in files)


def test_the_readme_path_local_up_validate_local_down(tmp_path):
    """As a new user would: `make local-up`, then `make validate SITE=local` (outputs and secrets
    read through the emulator, the same code path as against AWS) passes without printing the
    password; a wrong password or a wrong CA fails with a readable line and exit 1; `make
    local-down` leaves nothing running."""
    from tools.harness.pki import make_ca

    env = {**os.environ, "ORTHWEB_LOCALSITE_DIR": str(tmp_path / "localsite")}

    def make(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "-s", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)

    up = make("local-up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "DICOM TLS: 127.0.0.1:" in up.stdout and "site CA  :" in up.stdout and "password in" in up.stdout
    info = json.loads((tmp_path / "localsite" / "site.json").read_text())
    try:
        assert all(alive(pid) for pid in info["pids"].values())
        password = Path(info["password_file"]).read_text().strip()
        validated = make("validate", "SITE=local")
        assert validated.returncode == 0, validated.stdout + validated.stderr
        lines = validated.stdout.splitlines()
        assert lines[-1] == "site OK: 9/9 checks passed", lines
        assert "PASS  DICOMweb QIDO-RS and WADO-RS" in lines[6] and "PASS  DICOM object in the S3 bucket" in lines[7]
        assert password not in validated.stdout + validated.stderr

        wrong = tmp_path / "wrong-password"
        wrong.write_text("not-the-password")
        refused = make("validate", "SITE=local", f"ARGS=--password-file {wrong}")
        # make reports the validator's exit code 1 as "Error 1" (and exits 2 itself).
        assert "Error 1" in refused.stderr and "FAIL  REST with the site credentials: " in refused.stdout
        other = make_ca(tmp_path / "other", "Some other CA").cert
        untrusted = make("validate", "SITE=local", f"ARGS=--ca {other}")
        assert "Error 1" in untrusted.stderr and "FAIL  HTTPS with the site CA: " in untrusted.stdout
        assert "certificate verify failed" in untrusted.stdout
    finally:
        down = make("local-down")
    assert down.returncode == 0 and "local site stopped" in down.stdout
    assert not any(alive(pid) for pid in info["pids"].values())


def test_local_up_fails_naming_the_listener_when_two_services_share_a_port(tmp_path, monkeypatch, capsys):
    """The old free_port() could hand one port to two services: nginx then failed to bind and
    local-up still said "up". Forced here: Orthanc's HTTP port and the HTTPS front door collide."""
    from tools.harness import localsite

    a, b, c = free_ports(3)
    collide = {"orthanc_http": a, "orthanc_dicom": b, "https": a, "dicom_tls": c}
    monkeypatch.setattr(localsite, "free_ports", lambda n: [collide[name] for name in localsite.PORT_NAMES][:n])
    monkeypatch.setattr(localsite, "STATE_FILE", tmp_path / "localsite" / "site.json")
    code = localsite.main(["localsite", "up"])
    out, err = capsys.readouterr()
    assert code == 1 and "is up" not in out
    line = err.strip().splitlines()[-1]
    assert line.startswith("Orthweb local site is NOT up: "), line
    assert re.search(rf"127\.0\.0\.1:({a}|{c})\b", line), "the line names the listener that did not answer"
    assert not (tmp_path / "localsite" / "site.json").exists()
