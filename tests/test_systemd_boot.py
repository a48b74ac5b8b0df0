"""The host boots under real systemd: a Debian root booted as a container (tools/harness/systemd_host.py),
cloud-init reading the real rendered user data from a NoCloud seed, the real units, the real
boot bundle fetched from the emulator's config bucket and checked, the real bootstrap. What cannot
run off EC2 is a named stand-in there (instance metadata, dnf, the compose download, the CloudWatch
agent, Docker: nginx and Orthanc run natively as transient units).

The host's AWS calls run as the stack's host role, its policies read from the synthesized default
stack, with the emulator enforcing IAM identity policies (and Orthanc's as Orthanc's role).

One host for the module, in order: a first boot with AWS unreachable fails and the unit retries it
until AWS answers; the site then answers HTTPS and DICOM TLS; the refresh timer runs the refresh
under its unit and follows a rotated password; a reboot brings the same site back; without one of
its permissions the refresh fails with AccessDenied. Every wait is
bounded: a hung boot (the lock deadlock of issue 18) fails the test instead of hanging CI."""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from config import ROOT
from config.facts import APP_DB_USER, HTTPS_PORT
from tools.harness.localsite import LocalSite
from tools.harness.systemd_host import (
    IPTABLES_LOG,
    SOURCE_MOUNT,
    Machine,
    Relay,
    host_root,
    install_standins,
    seed_cloud_init,
)
from tools.proc import free_port
from userdata import AppValues, bundle_files, pack_bundle, render_user_data

pytestmark = pytest.mark.systemd

# A boot that has not brought the site up within this long is hung (a healthy one takes ~20 s here).
BOOT_BOUND = 150
CONFIG_BUCKET = "orthweb-config-systemd"
UNITS = ("orthweb-boot.service", "orthweb.service", "orthweb-refresh.timer")


@pytest.fixture(scope="module")
def host(tmp_path_factory, synth_profile):
    workdir = tmp_path_factory.mktemp("systemd-host")
    root = host_root()
    site = LocalSite(workdir / "site")
    site.provision()
    site.s3.create_bucket(Bucket=CONFIG_BUCKET)
    files = bundle_files(AppValues())
    # STAND-IN: the local database's CA in place of Amazon's RDS CAs (the database is not RDS).
    files["etc/orthweb/rds-ca.pem"] = (0o644, site.rds_ca.cert.read_text())
    bundle = pack_bundle(files)
    site.s3.put_object(Bucket=CONFIG_BUCKET, Key=bundle.key, Body=bundle.data)
    user_data = render_user_data(replace(site.host_values(), config_bucket=CONFIG_BUCKET), bundle)
    relay = Relay(free_port(), site.emulator.port)
    machine = Machine(root, workdir / "machine", binds={str(ROOT): SOURCE_MOUNT}).mount()
    # The host's calls run as the stack's host role (its policies from the synthesized default
    # stack), with IAM enforced from here on: a missing permission fails the boot, as on AWS.
    aws_env = {
        **{k: v for k, v in site.emulator.client_env().items() if k != "AWS_ENDPOINT_URL"},
        **site.under_stack_roles(synth_profile("default").data, config_bucket=CONFIG_BUCKET, session="i-0systemd"),
    }
    install_standins(
        machine,
        aws_endpoint=f"http://127.0.0.1:{relay.port}",
        aws_env=aws_env,
        ports=site.ports,
        s3_endpoint=site.emulator.endpoint,
    )
    seed_cloud_init(machine, user_data)
    try:
        machine.boot()
        yield SimpleNamespace(site=site, machine=machine, relay=relay, bundle=bundle)
    finally:
        machine.close()
        relay.close()
        site.stop()


def _served_certificate(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            cert = tls.getpeercert(binary_form=True)
    assert cert
    return cert


def _site_answers(host) -> list[str]:
    site = host.site
    # The site CA the host made, as a PACS would be given it.
    site.run.mkdir(parents=True, exist_ok=True)
    site.ca_path.write_text(json.loads(site.sm.get_secret_value(SecretId=site.arns["ca"])["SecretString"])["ca_cert"])
    inside = host.machine.run(
        "curl", "-sf", "--cacert", "/run/orthweb/site-ca.pem", f"https://localhost:{site.ports['https']}/nginx-health"
    )
    return [site.check_rest(site.ports["https"]), site.check_dicom(site.ports["dicom_tls"]), inside.stdout]


def test_a_first_boot_without_aws_is_retried_by_its_unit_until_the_site_is_up(host):
    m = host.machine
    # cloud-init (NoCloud) wrote the user data's files and enabled the boot unit.
    assert "BUNDLE_SHA256='" + host.bundle.sha256 in m.run("cat", "/etc/orthweb/site.env").stdout
    deadline = time.monotonic() + 90
    while int(m.unit("orthweb-boot.service").get("NRestarts", "0")) < 1:
        assert time.monotonic() < deadline, "the boot did not fail and restart without AWS:\n" + m.journal(tail=40)
        time.sleep(0.5)
    assert "orthweb-fetch" in m.journal("orthweb-boot.service")
    host.relay.open()  # AWS answers from now on
    m.wait_unit("orthweb-boot.service", ("active",), timeout=BOOT_BOUND)
    m.wait_unit("orthweb.service", ("active",), timeout=30)
    # The program's own log, for the CloudWatch agent (LogsDirectory=orthweb in the units).
    shipped = m.run("cat", "/var/log/orthweb/host.log").stdout
    assert "done: boot" in shipped and "done: secrets" in shipped
    # orthweb.service applied the containers' egress rules before compose (the iptables STAND-IN's record).
    # S3's ranges were read from the emulator's prefix list as the host role (IAM enforced).
    assert "done: egress" in shipped and "container egress: DNS, database, 3 S3 range(s)" in shipped
    rules = m.run("cat", IPTABLES_LOG).stdout
    assert f"-A ORTHWEB-EGRESS -d 52.216.0.0/15 -p tcp -m tcp --dport {HTTPS_PORT}" in rules
    assert "iptables -w -I DOCKER-USER 1 -i orthweb0 -j ORTHWEB-EGRESS" in rules
    enabled = m.run("systemctl", "is-enabled", *UNITS).stdout.split()
    assert enabled == ["enabled"] * len(UNITS), enabled
    assert m.unit("orthweb-refresh.timer")["ActiveState"] == "active"


def test_the_booted_site_answers_https_and_dicom_tls(host):
    rest, dicom, inside = _site_answers(host)
    assert "REST answers as ORTHANC" in rest and "C-ECHO to ORTHANC" in dicom
    assert inside == "ok\n", "nginx answers inside the host, with the site CA the host wrote"


def test_the_refresh_timer_follows_a_rotated_password_under_its_unit(host):
    """An operator rotates the app database password (database, then secret); the timer's refresh
    recreates Orthanc and reloads nginx, and Orthanc keeps running after the refresh unit ends
    (as a container lives in Docker's cgroup, not in the unit that asked for it)."""
    site, m = host.site, host.machine
    admin = json.loads(site.sm.get_secret_value(SecretId=site.arns["admin"])["SecretString"])
    rotated = "rotated-" + os.urandom(12).hex()
    site.pg.psql_superuser(f"ALTER ROLE {APP_DB_USER} PASSWORD '{rotated}'")
    site.sm.put_secret_value(SecretId=site.arns["admin"], SecretString=json.dumps({**admin, "db_password": rotated}))
    deadline = time.monotonic() + 120
    while "Orthanc's configuration changed: recreating orthanc" not in m.journal("orthweb-refresh.service"):
        assert time.monotonic() < deadline, "no refresh followed the rotation within 120 s:\n" + m.journal(tail=40)
        time.sleep(1)
    deadline = time.monotonic() + 30
    while m.unit("orthweb-refresh.service")["ActiveState"] != "inactive":
        assert time.monotonic() < deadline, "the refresh did not end"
        time.sleep(0.5)
    journal = m.journal("orthweb-refresh.service")
    assert "reloading nginx" in journal and "done: refresh" in journal
    assert "recreating orthanc" in m.run("cat", "/var/log/orthweb/host.log").stdout
    assert m.unit("orthweb-refresh.service")["Result"] == "success"
    assert m.unit("orthweb-standin-orthanc.service")["ActiveState"] == "active"
    assert "REST answers as ORTHANC" in _site_answers(host)[0]
    assert rotated not in m.journal(), "no secret in the host's journal"


def test_a_reboot_brings_the_same_site_back(host):
    site, m = host.site, host.machine
    before = _served_certificate(site.ports["https"])
    versions = {
        name: len(site.sm.list_secret_version_ids(SecretId=site.arns[name])["Versions"])
        for name in ("admin", "tls", "ca")
    }
    m.poweroff()
    m.boot()
    m.wait_unit("orthweb-boot.service", ("active",), timeout=BOOT_BOUND)
    m.wait_unit("orthweb.service", ("active",), timeout=30)
    assert "REST answers as ORTHANC" in _site_answers(host)[0]
    assert _served_certificate(site.ports["https"]) == before, "the same certificate after the reboot"
    after = {name: len(site.sm.list_secret_version_ids(SecretId=site.arns[name])["Versions"]) for name in versions}
    assert after == versions, "no secret was made again"


def test_the_refresh_fails_under_its_unit_without_one_of_the_host_permissions(host):
    """The host runs as the stack's host role with IAM enforced: take ReadSecrets out of its policy
    and the next refresh fails with AccessDenied, as it would on AWS (the policy is put back after)."""
    import boto3

    site, m = host.site, host.machine
    iam = boto3.client("iam", **site.emulator.boto_kwargs())
    role, name = f"{site.name}-host", site.name + "-host"
    original = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
    document = original if isinstance(original, dict) else json.loads(original)
    kept = [s for s in document["Statement"] if s.get("Sid") != "ReadSecrets"]
    assert len(kept) == len(document["Statement"]) - 1
    iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps({**document, "Statement": kept}))
    try:
        before = len(m.journal("orthweb-refresh.service"))
        # A oneshot: start returns when the run ends, non-zero when it failed (a timer run may be
        # under way: start then waits for it and runs again).
        started = m.run("systemctl", "start", "orthweb-refresh.service", check=False, timeout=120)
        journal = m.journal("orthweb-refresh.service")[before:]
        assert started.returncode != 0 and m.unit("orthweb-refresh.service")["Result"] != "success", journal
        assert "AccessDenied" in journal and "secretsmanager:GetSecretValue" in journal, journal[-2000:]
        assert f"assumed-role/{role}/" in journal
    finally:
        iam.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(document))
