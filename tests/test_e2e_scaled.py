"""The scaled profile end to end on the local site harness: two Orthanc servers (``several_servers``,
each its own ``server_identifier``) on one TLS-only PostgreSQL index and one bucket, each behind its
own nginx front door, and in front of them HAProxy in ``mode tcp`` standing where the AWS NLB stands
(TLS passes through; HTTPS health checks of ``/orthanc-health`` take a host out). Real programs
only: the S3 plugin STAND-IN is the one part that is not what a host runs (see test_e2e.py).

The bootstrap tests race three hosts' bootstraps on purpose. Each host talks to the emulator
through a proxy of its own (tools/harness/awsproxy.py) that passes every call unchanged; it only
holds some calls back until other hosts have reached a point, so the interleaving under test
happens every time instead of now and then."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from config import ROOT
from config.inputs import DicomModality
from tests.local_site import all_present, auth, count_instances, dcm_objects, stored
from tools.harness.awsproxy import Answer, AwsProxy, Call, Forward, Rendezvous
from tools.harness.dicom_sender import SendReport, make_instances, make_study, send
from tools.harness.hostsim import install_host_program
from tools.harness.localsite import LocalSite
from tools.proc import alive

pytestmark = pytest.mark.e2e

FINDER = "FINDER"  # a modality allowed to query (C-FIND), on every server


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    s = LocalSite(
        tmp_path_factory.mktemp("scaled"),
        hosts=2,
        modalities=(DicomModality(FINDER, "127.0.0.1", 104, ("echo", "find")),),
    ).start()
    yield s
    s.stop()


def send_to(s: LocalSite, port: int, instances, **kwargs) -> SendReport:
    return send("127.0.0.1", port, s.ae_title, str(s.ca_path), instances, **kwargs)


def send_concurrently(s: LocalSite, port: int, batches, after_each=None) -> list[SendReport]:
    """One association per batch, all at once; ``after_each`` hooks the first sender only."""
    reports: list[SendReport | None] = [None] * len(batches)

    def run(i: int) -> None:
        reports[i] = send_to(s, port, batches[i], after_each=after_each if i == 0 else None)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert all(r is not None for r in reports), "a sender did not finish"
    return [r for r in reports if r is not None]


def associations(s: LocalSite) -> list[int]:
    """Connections the balancer has given each host on the DICOM listener so far."""
    servers = s.balancer_servers()
    return [int(servers[("dicom_tls", h.name)]["stot"]) for h in s.local_hosts]


# -- two servers, one index, one bucket -----------------------------------------------------------


def test_four_senders_through_the_balancer_store_every_instance_once(scaled):
    before = [count_instances(scaled, h) for h in (0, 1)], dcm_objects(scaled), associations(scaled)
    batches = [make_instances(100) for _ in range(4)]
    reports = send_concurrently(scaled, scaled.ports["dicom_tls"], batches)
    assert [len(r.acknowledged) for r in reports] == [100] * 4
    spread = [after - earlier for after, earlier in zip(associations(scaled), before[2], strict=True)]
    assert all(n >= 1 for n in spread), f"the balancer gave the hosts {spread} associations: not both served"
    # Either server answers for the whole index: exactly the 400 new instances, seen through each.
    assert [count_instances(scaled, h) - before[0][h] for h in (0, 1)] == [400, 400]
    new_objects = dcm_objects(scaled) - before[1]
    assert len(new_objects) == 400
    uids = [uid for batch in batches for _, uid in batch]
    index = stored(scaled)
    attachments = [index.get(uid, "") for uid in uids]
    assert "" not in attachments and len(set(attachments)) == 400, "each instance indexed once, its own file"
    assert {a for a in attachments if any(a in k for k in new_objects)} == set(attachments)
    assert all_present(scaled, uids) == []


def study_instances(s: LocalSite, study_uid: str, host: int) -> int:
    status, body = s.rest("/tools/lookup", auth=auth(s), method="POST", data=study_uid.encode(), host=host)
    assert status == 200
    studies = [hit["ID"] for hit in json.loads(body) if hit["Type"] == "Study"]
    assert len(studies) == 1, f"{s.host(host).name} finds {len(studies)} studies for one StudyInstanceUID"
    status, body = s.rest(f"/studies/{studies[0]}/instances", auth=auth(s), host=host)
    assert status == 200
    return len(json.loads(body))


def c_find(s: LocalSite, host: int, level: str, **keys: str) -> list:
    """C-FIND (study root) as FINDER through one host's own TLS front door; the matches."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    ae = AE(ae_title=FINDER)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 30
    port = s.host(host).ports["dicom_tls"]
    assoc = ae.associate("127.0.0.1", port, ae_title=s.ae_title, tls_args=(s.tls_context(), "localhost"))
    assert assoc.is_established, f"C-FIND association to {s.host(host).name} refused"
    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    try:
        matches = [
            identifier
            for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
            if status and status.Status in (0xFF00, 0xFF01)
        ]
    finally:
        assoc.release()
    return matches


def test_a_study_sent_half_through_each_host_is_one_study_on_both(scaled):
    study = make_study(20, patient_id="SPLIT-STUDY")
    study_uid = str(dcmread(io.BytesIO(study[0][0])).StudyInstanceUID)
    first = send_to(scaled, scaled.host_ports[0]["dicom_tls"], study[:10])
    assert len(first.acknowledged) == 10
    # The second server already sees what the first stored: one index.
    assert study_instances(scaled, study_uid, host=1) == 10
    second = send_to(scaled, scaled.host_ports[1]["dicom_tls"], study[10:])
    assert len(second.acknowledged) == 10
    sop_uids = {uid for _, uid in study}
    for host in (0, 1):
        assert study_instances(scaled, study_uid, host) == 20
        studies = c_find(scaled, host, "STUDY", StudyInstanceUID=study_uid, NumberOfStudyRelatedInstances="")
        assert len(studies) == 1 and int(studies[0].NumberOfStudyRelatedInstances) == 20
        images = c_find(scaled, host, "IMAGE", StudyInstanceUID=study_uid, SOPInstanceUID="")
        assert {str(m.SOPInstanceUID) for m in images} == sop_uids
    # Control: a query for another study finds nothing, so the matches above are this study's.
    assert c_find(scaled, 0, "STUDY", StudyInstanceUID="1.2.3.4.5.6.7.8.9", NumberOfStudyRelatedInstances="") == []


def test_kill_9_of_one_orthanc_mid_ingest_loses_nothing_and_the_resend_needs_only_the_other(scaled):
    """On the module's site (the last test to use it; it ends with both hosts in rotation again)."""
    site = scaled
    batches = [make_instances(60) for _ in range(4)]
    killed = threading.Event()

    def kill_midway(index: int) -> None:
        if index == 20 and not killed.is_set():
            killed.set()
            site.kill_orthanc(1)

    before = associations(site)
    reports = send_concurrently(site, site.ports["dicom_tls"], batches, after_each=kill_midway)
    spread = [after - earlier for after, earlier in zip(associations(site), before, strict=True)]
    assert killed.is_set() and all(n >= 1 for n in spread), f"associations per host: {spread}"
    assert any(r.failed for r in reports), "the kill cut no association: the test did not test"
    acknowledged = [uid for r in reports for uid in r.acknowledged]
    assert 80 <= len(acknowledged) < 240
    assert all_present(site, acknowledged) == []
    # The balancer's health check (GET /orthanc-health through host-1's nginx, still running) takes it out.
    site.wait_host_state(1, "DOWN")
    before = associations(site)
    resend = send_concurrently(site, site.ports["dicom_tls"], batches)
    assert [len(r.acknowledged) for r in resend] == [60] * 4
    assert [after - earlier for after, earlier in zip(associations(site), before, strict=True)][1] == 0
    assert all_present(site, [uid for batch in batches for _, uid in batch]) == []
    # The host comes back into rotation once its Orthanc answers again.
    site.start_orthanc(1)
    site.wait_host_state(1, "UP")
    assert len(send_to(site, site.host_ports[1]["dicom_tls"], make_instances(5)).acknowledged) == 5


def test_local_up_with_two_hosts_prints_the_balancer_and_down_stops_everything(tmp_path):
    env = {**os.environ, "ORTHWEB_LOCALSITE_DIR": str(tmp_path / "localsite")}

    def localsite(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tools.harness.localsite", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=240,
        )

    up = localsite("up", "--hosts", "2")
    assert up.returncode == 0, up.stdout + up.stderr
    info = json.loads((tmp_path / "localsite" / "site.json").read_text())
    # The lines a user reads name the balancer's ports; each host's own front door is listed too.
    assert f"web/REST : https://127.0.0.1:{info['https'].rsplit(':', 1)[1]}" in up.stdout
    assert f"DICOM TLS: 127.0.0.1:{info['dicom_port']}" in up.stdout and "site CA  :" in up.stdout
    assert "2 hosts behind a TCP load balancer" in up.stdout
    assert {"haproxy", "nginx", "nginx-1", "orthanc", "orthanc-1", "postgres", "emulator"} <= set(info["pids"])
    assert all(alive(pid) for pid in info["pids"].values())
    down = localsite("down")
    assert down.returncode == 0 and "local site stopped" in down.stdout
    assert not any(alive(pid) for pid in info["pids"].values())
    assert not Path(info["balancer_dir"]).exists()


# -- three hosts booting at once ------------------------------------------------------------------


# The proxies: all calls reach the emulator; "barrier" holds every PutSecretValue until every host
# has reached its own put of that secret (each host read "no value" and made its own first value: the
# worst case for create-once secrets); "late-store" lets host-0 store the server certificate only
# after every host has read the empty secret, and holds the others after their read until host-0
# has stored (the interleaving in which two hosts each stored a certificate before 2026-11-29).
def ordering(target: str, hosts: int, mode: str) -> tuple[Rendezvous, list[AwsProxy]]:
    """One proxy per host in front of the emulator (tools/harness/awsproxy.py): orders calls between
    hosts, changes none. ``barrier``: every host's PutSecretValue of a secret waits until all hosts
    have made theirs. ``late-store``: every host reads the (empty) certificate secret; host-0 stores
    its certificate only once all have read, and the others go on only after that: each of them
    then stores what it made."""
    meeting = Rendezvous()

    def handler(call: Call, forward: Forward) -> Answer:
        me = call.host
        if mode == "barrier" and call.operation == "PutSecretValue":
            meeting.arrive(f"put-{call.kind}", me)
            meeting.wait(f"put-{call.kind}", hosts)
        if mode == "late-store" and call.kind == "site-tls":
            if call.operation == "GetSecretValue":
                answer = forward()
                meeting.arrive("seen", me)
                if me != "host-0":
                    meeting.wait("stored", 1)
                return answer
            if call.operation == "PutSecretValue" and me == "host-0":
                meeting.wait("seen", hosts)
                answer = forward()
                meeting.arrive("stored", me)
                return answer
        return forward()

    return meeting, [AwsProxy(target, f"host-{i}", handler) for i in range(hosts)]


@contextlib.contextmanager
def ordered(site: LocalSite, mode: str) -> Iterator[tuple[Rendezvous, list[str]]]:
    meeting, proxies = ordering(site.emulator.endpoint, site.hosts, mode)
    for proxy in proxies:
        proxy.start()
    try:
        yield meeting, [p.endpoint for p in proxies]
    finally:
        for proxy in proxies:
            proxy.stop()


@pytest.fixture
def three_hosts(tmp_path):
    """A site as Terraform leaves it (database, bucket, empty secrets) and three hosts not yet booted."""
    s = LocalSite(tmp_path / "site", hosts=3).provision()
    yield s
    s.stop()


def versions(s: LocalSite, label: str) -> int:
    return len(s.sm.list_secret_version_ids(SecretId=s.arns[label])["Versions"])


def test_three_concurrent_bootstraps_agree_on_one_admin_secret_ca_and_certificate(three_hosts, tmp_path):
    with ordered(three_hosts, "barrier") as (meeting, endpoints):
        logs = three_hosts.bootstrap_hosts(aws_endpoints=endpoints)
    # The worst case happened: every host made its own first value of each and tried to store it.
    assert [meeting.count(f"put-{kind}") for kind in ("orthanc-admin", "site-ca", "site-tls")] == [3, 3, 3]
    assert three_hosts.runtime_disagreements() == []
    assert [versions(three_hosts, label) for label in ("admin", "ca", "tls")] == [1, 1, 1]
    text = "\n".join(logs)
    for secret in ("orthanc-admin", "site-ca"):
        assert len(re.findall(rf"secret {secret}-\w+: created", text)) == 1
        assert len(re.findall(rf"secret {secret}-\w+: another host stored it first", text)) == 2
    # One CA, and the one certificate every host presents is issued by it.
    run = three_hosts.host(0).run
    ca = json.loads(three_hosts.sm.get_secret_value(SecretId=three_hosts.arns["ca"])["SecretString"])["ca_cert"]
    assert (run / "site-ca.pem").read_text().strip() == ca.strip()
    check = subprocess.run(
        ["openssl", "verify", "-CAfile", str(run / "site-ca.pem"), str(run / "nginx" / "site-cert.pem")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # The database role was created (or found) by all three at once: its password is the agreed one.
    assert three_hosts.pg.psql_superuser("select count(*) from pg_roles where rolname = 'orthanc'") == "1"


def test_control_without_the_fixed_token_the_same_race_stores_three_admin_secrets(three_hosts, tmp_path):
    """Negative control: the race above is real. A copy of the bootstrap that stores its first
    value with a token of its own per run (instead of the fixed one) ends with three values."""
    program = install_host_program(tmp_path / "own-token")
    module = program.parent.parent / "lib" / "orthweb" / "orthweb_host" / "bootstrap.py"
    text = module.read_text()
    fixed = re.search(r"^FIRST_VALUE_TOKEN = .*$", text, re.M)
    assert fixed, "the host's program no longer has FIRST_VALUE_TOKEN: update this control"
    module.write_text(text.replace(fixed.group(0), 'FIRST_VALUE_TOKEN = "orthweb-first-value-" + secrets.token_hex(8)'))
    with ordered(three_hosts, "barrier") as (meeting, endpoints):
        logs = three_hosts.bootstrap_hosts(program=program, aws_endpoints=endpoints)
    assert meeting.count("put-orthanc-admin") == 3
    assert versions(three_hosts, "admin") == 3
    assert len(re.findall(r"secret orthanc-admin-\w+: created", "\n".join(logs))) == 3


def test_a_host_that_read_the_empty_certificate_secret_before_another_stored_one_agrees(three_hosts, tmp_path):
    with ordered(three_hosts, "late-store") as (meeting, endpoints):
        three_hosts.bootstrap_hosts(aws_endpoints=endpoints)
    assert meeting.count("stored") == 1, "the interleaving under test did not happen"
    assert three_hosts.runtime_disagreements() == []
    assert versions(three_hosts, "tls") == 1


def test_hosts_creating_the_database_role_at_once_do_not_collide(three_hosts):
    """Three hosts that all find no database role create it at the same moment: one creates it,
    the others find it, none fails. (They collided before: each checked, none saw the role, and the
    second CREATE ROLE failed on pg_authid's unique index, stopping that host's boot.) To make the
    moment the same for all three, a transaction of the test holds pg_authid, which CREATE ROLE
    must write; it lets go once all three hosts are waiting on the database."""
    from tools.harness.localpg import PG_BIN

    pg = three_hosts.pg
    holder = subprocess.Popen(
        [str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(pg.root), "-p", str(pg.port),
         "-U", pg.superuser, "-d", pg.database],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PGPASSWORD": pg.password},
    )  # fmt: skip
    assert holder.stdin
    holder.stdin.write("BEGIN;\nLOCK TABLE pg_catalog.pg_authid IN SHARE ROW EXCLUSIVE MODE;\nSELECT 'held';\n")
    holder.stdin.flush()
    waiting_sql = (
        "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and backend_type = 'client backend'"
    )
    outcome: dict[str, Any] = {}

    def boot() -> None:
        try:
            outcome["logs"] = three_hosts.bootstrap_hosts()
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    booting = threading.Thread(target=boot)
    booting.start()
    try:
        deadline = time.monotonic() + 120
        while pg.psql_superuser(waiting_sql) != "3" and booting.is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pg.psql_superuser(waiting_sql) == "3", "every host is waiting at the role step"
    finally:
        holder.stdin.write("COMMIT;\n")
        holder.stdin.close()
        holder.wait(30)
        booting.join(300)
    assert "error" not in outcome, outcome.get("error")
    text = "\n".join(outcome["logs"])
    assert pg.psql_superuser("select count(*) from pg_roles where rolname = 'orthanc'") == "1"
    assert len(re.findall(r"database role orthanc: created or password reset", text)) >= 1
    assert three_hosts.runtime_disagreements() == []
