"""DICOM client certificates, run for real: the operator command against the AWS API emulator
(issue, list, revoke; the CA and the CRL checked with ``cryptography`` and ``openssl verify``),
then a real nginx ``stream`` server requiring client certificates in front of a TCP echo server,
reached with Python's ssl module: no certificate, an issued one, a revoked one, and one revoked
after nginx started (new CRL written, ``nginx -s reload``)."""

from __future__ import annotations

import datetime
import json
import os
import socket
import socketserver
import ssl
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from config import ROOT
from tools.harness.emulator import Emulator
from tools.harness.pki import Certificate, make_ca, make_server_cert
from tools.harness.pki import issue as pki_issue
from tools.ops import modalities
from tools.ops.modalities import CA_SECRET, CLIENTS_SECRET, DEFAULT_DAYS, MODALITY_NAME
from tools.proc import free_ports, stop_process, wait_for_port
from userdata.host import pki

pytestmark = pytest.mark.programs
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
REGION = "us-east-1"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    with Emulator(tmp_path_factory.mktemp("emulator"), region=REGION) as emu:
        yield emu


class Site:
    """One site's two secrets, created empty as Terraform does, and the command run against them."""

    def __init__(self, emulator: Emulator, folder: Path):
        self.emulator = emulator
        self.folder = folder
        self.name = "s" + uuid.uuid4().hex[:12]  # a valid stack name, fresh per test
        self.sm = boto3.client("secretsmanager", **emulator.boto_kwargs())
        for which in (CA_SECRET, CLIENTS_SECRET):
            self.sm.create_secret(Name=f"{self.name}/{which}")
        self.outputs: list[str] = []  # everything the command printed, scanned for key material

    def run(self, *args: str, site: str | None = None) -> subprocess.CompletedProcess:
        argv = ["--site", site or self.name, "--region", REGION, "--endpoint-url", self.emulator.endpoint, *args]
        # Credentials come from the environment (the default chain), never from the arguments.
        env = {**os.environ, **self.emulator.client_env()}
        env.pop("AWS_ENDPOINT_URL")  # the hidden --endpoint-url is what points at the emulator
        proc = subprocess.run(
            [sys.executable, "-m", "tools.ops.modalities", *argv],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.outputs += [proc.stdout, proc.stderr]
        return proc

    def ok(self, *args: str) -> str:
        proc = self.run(*args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def issue(self, modality: str, *extra: str) -> Path:
        out = self.folder / "out" / f"{modality}-{len(self.outputs)}"  # a new folder per issue
        self.ok("issue", modality, "--out", str(out), *extra)
        return out

    def secret(self, which: str) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.sm.get_secret_value(SecretId=f"{self.name}/{which}")["SecretString"])
        return value

    def versions(self, which: str) -> int:
        return len(self.sm.list_secret_version_ids(SecretId=f"{self.name}/{which}")["Versions"])

    def host_files(self, folder: Path) -> tuple[Path, Path]:
        """What the host writes from the clients secret: nginx's ssl_client_certificate and ssl_crl."""
        clients = self.secret(CLIENTS_SECRET)
        folder.mkdir(parents=True, exist_ok=True)
        ca, crl = folder / "client-ca.pem", folder / "client-crl.pem"
        ca.write_text(clients["ca_cert"])
        crl.write_text(clients["crl"])
        return ca, crl


@pytest.fixture
def site(emulator: Emulator, tmp_path: Path) -> Site:
    return Site(emulator, tmp_path)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def serial_of(path: Path) -> str:
    return format(load_cert(path).serial_number, "x")


def openssl_verify(ca: Path, cert: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), *extra, str(cert)], capture_output=True, text=True, timeout=60
    )


# -- the command ----------------------------------------------------------------------------------


@dataclass
class Lifecycle:
    """One site's certificates through issue, list, revoke and a re-issue, run once for the module;
    what each step left is kept for the tests below."""

    site: Site
    empty_listing: str
    ct: Path
    mr: Path
    ca_secret: dict[str, Any]
    clients: dict[str, Any]
    duplicate: subprocess.CompletedProcess
    versions_before_duplicate: int
    versions_after_duplicate: int
    duplicate_folder: Path
    listing: list[str]
    after_revoke: list[dict[str, Any]]
    unknown: subprocess.CompletedProcess
    twice: subprocess.CompletedProcess
    crl_pem: str
    host_ca: Path
    host_crl: Path
    ct_new: Path
    crl_after_reissue_pem: str
    issued_after_reissue: list[dict[str, Any]]
    ca_secret_after_reissue: dict[str, Any]

    @property
    def ca(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca_secret["ca_cert"].encode())

    @property
    def crl(self) -> x509.CertificateRevocationList:
        return x509.load_pem_x509_crl(self.crl_pem.encode())


@pytest.fixture(scope="module")
def lifecycle(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Lifecycle:
    folder = tmp_path_factory.mktemp("lifecycle")
    site = Site(emulator, folder)
    empty_listing = site.ok("list")
    ct, mr = site.issue("CT_1"), site.issue("MR.2-b")
    ca_secret, clients = site.secret(CA_SECRET), site.secret(CLIENTS_SECRET)
    before = site.versions(CLIENTS_SECRET)
    duplicate = site.run("issue", "CT_1", "--out", str(folder / "again"))
    after = site.versions(CLIENTS_SECRET)
    listing = site.ok("list").splitlines()
    site.ok("revoke", "CT_1")
    after_revoke = json.loads(site.ok("list", "--json"))
    unknown, twice = site.run("revoke", "US3"), site.run("revoke", "CT_1")
    crl_pem = site.secret(CLIENTS_SECRET)["crl"]
    host_ca, host_crl = site.host_files(folder / "host")
    ct_new = site.issue("CT_1", "--days", "30")
    later = site.secret(CLIENTS_SECRET)
    return Lifecycle(
        site,
        empty_listing,
        ct,
        mr,
        ca_secret,
        clients,
        duplicate,
        before,
        after,
        folder / "again",
        listing,
        after_revoke,
        unknown,
        twice,
        crl_pem,
        host_ca,
        host_crl,
        ct_new,
        later["crl"],
        later["issued"],
        site.secret(CA_SECRET),
    )


def test_issue_writes_the_key_certificate_chain_and_ca_files(lifecycle: Lifecycle):
    assert "no DICOM client certificates" in lifecycle.empty_listing
    for out, name in ((lifecycle.ct, "CT_1"), (lifecycle.mr, "MR.2-b")):
        assert sorted(p.name for p in out.iterdir()) == sorted(
            [f"{name}.key", f"{name}.crt", f"{name}-chain.pem", "site-client-ca.pem"]
        )
        assert stat.S_IMODE((out / f"{name}.key").stat().st_mode) == 0o600
        assert (out / f"{name}-chain.pem").read_text() == (out / f"{name}.crt").read_text() + (
            out / "site-client-ca.pem"
        ).read_text()


def test_the_secrets_hold_what_the_contract_says_and_the_hosts_one_no_key(lifecycle: Lifecycle):
    ca_secret, clients, ct, mr = lifecycle.ca_secret, lifecycle.clients, lifecycle.ct, lifecycle.mr
    assert set(ca_secret) == {"ca_cert", "ca_key"} and set(clients) == {"ca_cert", "crl", "issued"}
    assert clients["ca_cert"] == ca_secret["ca_cert"] == (ct / "site-client-ca.pem").read_text()
    assert "PRIVATE KEY" not in json.dumps(clients)
    assert ca_secret["ca_key"].startswith("-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
    assert [list(e) for e in clients["issued"]] == [["name", "serial", "not_after", "revoked"]] * 2
    assert [(e["name"], e["serial"], e["revoked"]) for e in clients["issued"]] == [
        ("CT_1", serial_of(ct / "CT_1.crt"), False),
        ("MR.2-b", serial_of(mr / "MR.2-b.crt"), False),
    ]


def test_the_ca_signs_end_entities_only_for_ten_years_named_after_the_site(lifecycle: Lifecycle):
    ca = lifecycle.ca
    assert (
        ca.subject.rfc4514_string() == f"CN=Orthweb {lifecycle.site.name} DICOM client CA" and ca.issuer == ca.subject
    )
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert ca.not_valid_after_utc - ca.not_valid_before_utc >= datetime.timedelta(days=3652)
    ca_key = serialization.load_pem_private_key(lifecycle.ca_secret["ca_key"].encode(), password=None)
    assert ca.public_key() == ca_key.public_key()


def test_a_client_certificate_is_for_client_auth_only_825_days_signed_by_the_ca(lifecycle: Lifecycle):
    cert = load_cert(lifecycle.ct / "CT_1.crt")
    cert.verify_directly_issued_by(lifecycle.ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "CT_1"
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=DEFAULT_DAYS) <= lifetime <= datetime.timedelta(days=DEFAULT_DAYS, hours=2)
    assert lifecycle.clients["issued"][0]["not_after"] == cert.not_valid_after_utc.date().isoformat()
    key = serialization.load_pem_private_key((lifecycle.ct / "CT_1.key").read_bytes(), password=None)
    assert key.public_key() == cert.public_key()


def test_a_second_certificate_for_a_name_is_refused_and_nothing_changes(lifecycle: Lifecycle):
    again = lifecycle.duplicate
    assert again.returncode == 2 and "MODALITY: 'CT_1' already has a certificate" in again.stderr
    assert "revoke it first" in again.stderr
    assert lifecycle.versions_after_duplicate == lifecycle.versions_before_duplicate
    assert not lifecycle.duplicate_folder.exists()


def test_list_and_revoke(lifecycle: Lifecycle):
    issued = lifecycle.clients["issued"]
    assert lifecycle.listing[0].split() == ["name", "serial", "not_after", "revoked"]
    assert [line.split() for line in lifecycle.listing[1:]] == [
        [e["name"], e["serial"], e["not_after"], "no"] for e in issued
    ]
    assert lifecycle.after_revoke == [{**issued[0], "revoked": True}, issued[1]]
    unknown, twice = lifecycle.unknown, lifecycle.twice
    assert unknown.returncode == 2 and "MODALITY: 'US3' has no certificate" in unknown.stderr
    assert "MR.2-b" in unknown.stderr  # names what is allowed
    assert twice.returncode == 2 and "already revoked" in twice.stderr


def test_the_crl_lists_the_revoked_serial_only_signed_by_the_ca_for_years(lifecycle: Lifecycle):
    crl, cert = lifecycle.crl, load_cert(lifecycle.ct / "CT_1.crt")
    assert crl.is_signature_valid(lifecycle.ca.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(load_cert(lifecycle.mr / "MR.2-b.crt").serial_number) is None
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=4 * 365)


def test_openssl_refuses_the_revoked_certificate_by_the_crl(lifecycle: Lifecycle):
    ca_file, crl_file, ct, mr = lifecycle.host_ca, lifecycle.host_crl, lifecycle.ct, lifecycle.mr
    good = openssl_verify(ca_file, mr / "MR.2-b.crt", "-crl_check", "-CRLfile", str(crl_file), "-purpose", "sslclient")
    assert good.returncode == 0, good.stdout + good.stderr
    bad = openssl_verify(ca_file, ct / "CT_1.crt", "-crl_check", "-CRLfile", str(crl_file), "-purpose", "sslclient")
    assert bad.returncode != 0 and "certificate revoked" in bad.stdout + bad.stderr
    # It is the CRL that refuses it: without the CRL check the same certificate verifies, and the
    # purpose check is real (a client certificate is no server certificate).
    assert openssl_verify(ca_file, ct / "CT_1.crt", "-purpose", "sslclient").returncode == 0
    assert openssl_verify(ca_file, mr / "MR.2-b.crt", "-purpose", "sslserver").returncode != 0


def test_a_later_issue_keeps_the_revocation_and_a_revoked_name_is_issued_again(lifecycle: Lifecycle):
    crl, cert = lifecycle.crl, load_cert(lifecycle.ct / "CT_1.crt")
    crl_after = x509.load_pem_x509_crl(lifecycle.crl_after_reissue_pem.encode())
    revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    carried = crl_after.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert revoked is not None and carried is not None
    assert carried.revocation_date_utc == revoked.revocation_date_utc
    assert crl_after.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == (
        crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    )
    new_cert = load_cert(lifecycle.ct_new / "CT_1.crt")
    assert new_cert.not_valid_after_utc - new_cert.not_valid_before_utc <= datetime.timedelta(days=30, hours=2)
    assert [(e["name"], e["revoked"]) for e in lifecycle.issued_after_reissue] == [
        ("CT_1", True),
        ("MR.2-b", False),
        ("CT_1", False),
    ]
    assert lifecycle.ca_secret_after_reissue == lifecycle.ca_secret  # the CA was created once


def test_nothing_the_command_printed_carries_key_material(lifecycle: Lifecycle):
    printed = "\n".join(lifecycle.site.outputs)
    assert lifecycle.site.outputs, "the command printed nothing: the scan below would prove nothing"
    assert "PRIVATE KEY" not in printed and lifecycle.ca_secret["ca_key"].splitlines()[5] not in printed
    assert (lifecycle.ct / "CT_1.key").read_text().splitlines()[5] not in printed


@pytest.mark.parametrize("name", ["", "a" * 65, "CT 1", "CT/1", "../x", "CT:1", "Ré", "CT\n"])
def test_bad_modality_names_exit_2(name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    # "--" ends the options, so a name like "-x" reaches the name check instead of argparse.
    for command in (["issue", "--out", str(tmp_path), "--", name], ["revoke", "--", name]):
        with pytest.raises(SystemExit) as exit_:
            modalities.main(["--site", "orthweb", *command])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"MODALITY: {name!r} is not allowed; allowed: 1-64 characters" in err
    assert not any(tmp_path.iterdir())


def test_the_name_rule_admits_what_it_promises():
    # The negative control of the test above: the edges of the rule pass.
    # The contract's character set, no more: a leading "-" or "." is allowed (give "--" first).
    for name in ("a" * 64, "C", "CT_1.x-y", "0", "MR-2.dcm", "-x", ".."):
        assert MODALITY_NAME.fullmatch(name), name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--site", "Bad_Site", "list"], "--site: 'Bad_Site' is not allowed"),
        (["--site", "orthweb", "issue", "CT", "--out", "x", "--days", "0"], "--days: 0 is not allowed"),
        (["--site", "orthweb", "issue", "CT", "--out", "x", "--days", "3651"], "--days: 3651 is not allowed"),
    ],
)
def test_bad_site_and_days_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_:
        modalities.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_site_and_region_default_to_the_projects_config(monkeypatch: pytest.MonkeyPatch, capsys):
    """Without --site/--region the command works on the site this checkout deploys (orthweb.toml,
    ORTHWEB_* variables), as `make modality-cert` runs it; a bad config is refused with exit 2."""
    seen: dict[str, str] = {}

    class Stop(Exception):
        pass

    def fake_client(service: str, region_name: str | None = None, endpoint_url: str | None = None):
        seen.update(service=service, region=str(region_name))
        raise Stop

    monkeypatch.setattr("boto3.client", fake_client)
    # An operator signed in (tests/test_operator_credentials.py covers one who is not).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE12")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-not-a-secret")
    monkeypatch.setenv("ORTHWEB_NAME", "radiology")
    monkeypatch.setenv("ORTHWEB_REGION", "eu-west-1")
    with pytest.raises(Stop):
        modalities.main(["list"])
    assert seen == {"service": "secretsmanager", "region": "eu-west-1"}
    monkeypatch.setenv("ORTHWEB_REGION", "mars-1")
    with pytest.raises(SystemExit) as exit_:
        modalities.main(["list"])
    assert exit_.value.code == 2 and "region: 'mars-1' is not allowed" in capsys.readouterr().err


def test_unknown_site_existing_key_file_and_a_stranded_list(site: Site, tmp_path: Path):
    missing = site.run("list", site="nosuchsite")
    assert (
        missing.returncode == 2 and "--site: no secret nosuchsite/dicom-clients in region us-east-1" in missing.stderr
    )

    # A key file already in --out is never overwritten, and nothing is created in AWS.
    out = tmp_path / "out"
    out.mkdir()
    (out / "CT.key").write_text("someone's key\n")
    proc = site.run("issue", "CT", "--out", str(out))
    assert proc.returncode == 2 and f"--out: {out / 'CT.key'} already exists" in proc.stderr
    assert (out / "CT.key").read_text() == "someone's key\n"
    assert site.versions(CA_SECRET) == site.versions(CLIENTS_SECRET) == 0

    # A clients list without its CA: a new CA would strand every certificate issued, so refuse.
    site.sm.put_secret_value(
        SecretId=f"{site.name}/{CLIENTS_SECRET}", SecretString=json.dumps({"ca_cert": "", "crl": "", "issued": []})
    )
    stranded = site.run("issue", "CT", "--out", str(tmp_path / "new"))
    assert stranded.returncode == 1 and f"{site.name}/{CA_SECRET} is empty but" in stranded.stderr
    assert site.versions(CA_SECRET) == 0


def test_a_write_that_raced_another_is_reported(site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    """Secrets Manager has no conditional write: another command storing a version between our read
    and our write is detected afterwards (exit 1) instead of being lost silently."""
    for key, value in site.emulator.client_env().items():
        monkeypatch.setenv(key, value)
    argv = ["--site", site.name, "--region", REGION, "--endpoint-url", site.emulator.endpoint]
    real_write = modalities.Secrets.write

    def racing_write(self: modalities.Secrets, which: str, value: dict[str, Any], read_at: str | None) -> None:
        if which == CLIENTS_SECRET:  # another operator's revoke lands first
            self.client.put_secret_value(SecretId=self.secret_id(which), SecretString=json.dumps(value))
        real_write(self, which, value, read_at)

    monkeypatch.setattr(modalities.Secrets, "write", racing_write)
    assert modalities.main([*argv, "issue", "CT", "--out", str(tmp_path / "a")]) == 1
    assert "was changed by someone else while this command ran" in capsys.readouterr().err
    # The negative control: the same command without the other write passes.
    monkeypatch.setattr(modalities.Secrets, "write", real_write)
    assert modalities.main([*argv, "issue", "MR", "--out", str(tmp_path / "b")]) == 0


def test_an_ec_p256_client_ca_signs_too(site: Site, tmp_path: Path):
    """The contract allows an EC P-256 CA (the command creates RSA): one put there by hand works."""
    ca, key = pki.make_ca(
        pki.subject(f"Orthweb {site.name} DICOM client CA"), 3650, key=ec.generate_private_key(ec.SECP256R1())
    )
    ca_pem, key_pem = pki.cert_pem(ca), pki.key_pem(key)
    site.sm.put_secret_value(
        SecretId=f"{site.name}/{CA_SECRET}", SecretString=json.dumps({"ca_cert": ca_pem, "ca_key": key_pem})
    )
    out = site.issue("CT")
    site.ok("revoke", "CT")
    ca_file, crl_file = site.host_files(tmp_path / "host")
    assert ca_file.read_text() == ca_pem and site.secret(CA_SECRET)["ca_key"] == key_pem  # kept, not replaced
    proc = openssl_verify(ca_file, out / "CT.crt", "-crl_check", "-CRLfile", str(crl_file))
    assert proc.returncode != 0 and "certificate revoked" in proc.stdout + proc.stderr
    assert openssl_verify(ca_file, out / "CT.crt").returncode == 0


# -- nginx in front: the proof that the files do what they should -----------------------------------


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    """A plain TCP echo server standing in for Orthanc's DICOM port."""
    (port,) = free_ports(1)
    server = socketserver.ThreadingTCPServer(("127.0.0.1", port), EchoHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Certificate, Certificate]:
    """The site's own (server) CA and certificate: a different CA from the client CA, as on a site."""
    folder = tmp_path_factory.mktemp("server-pki")
    ca = make_ca(folder, "Orthweb site CA")
    return ca, make_server_cert(folder, ca, "site")


def stream_conf(folder: Path, port: int, upstream: int, server: Certificate, client_ca: Path, crl: Path | None) -> str:
    crl_line = f"ssl_crl {crl};" if crl else "# no ssl_crl"
    return f"""load_module {STREAM_MODULE};
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
worker_processes 1;
events {{ worker_connections 64; }}
stream {{
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {server.cert};
        ssl_certificate_key {server.key};
        ssl_verify_client on;
        ssl_client_certificate {client_ca};
        {crl_line}
        proxy_pass 127.0.0.1:{upstream};
    }}
}}
"""


@dataclass
class Nginx:
    folder: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def conf(self) -> Path:
        return self.folder / "nginx.conf"

    @property
    def log(self) -> Path:
        return self.folder / "error.log"

    def command(self, *extra: str) -> list[str]:
        return ["nginx", "-p", str(self.folder), "-c", str(self.conf), "-e", str(self.log), *extra]

    def test(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=60)

    def start(self) -> None:
        self.process = subprocess.Popen(self.command("-g", "daemon off;"), stderr=subprocess.DEVNULL)
        wait_for_port(self.port, process=self.process)

    def workers(self) -> set[int]:
        assert self.process is not None
        found = set()
        for path in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(path.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.process.pid:
                found.add(int(path.parent.name))
        return found

    def reload(self, timeout: float = 60) -> None:
        """``nginx -s reload``, then wait until the workers of the old configuration have gone: from
        then on every connection is served with the new files. (If the new configuration were refused,
        the old workers would stay, and this fails naming the log.)"""
        old = self.workers()
        proc = subprocess.run(self.command("-s", "reload"), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.workers()
            if now and not now & old:
                return
            time.sleep(0.05)
        raise AssertionError(f"nginx did not finish reloading; see {self.log}:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture
def nginx_factory(tmp_path: Path, echo_port: int, server_pki: tuple[Certificate, Certificate]) -> Iterator[Any]:
    started: list[Nginx] = []

    def make(client_ca: Path, crl: Path | None, start: bool = True) -> Nginx:
        folder = tmp_path / f"nginx{len(started)}"
        folder.mkdir()
        (port,) = free_ports(1)
        nginx = Nginx(folder, port)
        nginx.conf.write_text(stream_conf(folder, port, echo_port, server_pki[1], client_ca, crl))
        started.append(nginx)
        if start:
            nginx.start()
        return nginx

    yield make
    for nginx in started:
        nginx.stop()


@dataclass
class Attempt:
    echoed: bool
    log: str  # what nginx logged while serving this connection


def connect(
    nginx: Nginx, server_ca: Path, client: tuple[Path, Path] | None, tls: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
) -> Attempt:
    """Handshake, send a line, read the echo. nginx checks the client certificate after the
    handshake and closes the connection if it refuses it: then there is no echo."""
    context = ssl.create_default_context(cafile=str(server_ca))
    context.minimum_version = context.maximum_version = tls
    if client:
        context.load_cert_chain(*client)
    mark = nginx.log.stat().st_size
    payload = b"C-ECHO-RQ " + uuid.uuid4().hex.encode()
    received = b""
    try:
        with socket.create_connection(("127.0.0.1", nginx.port), timeout=30) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as conn:
                conn.sendall(payload)
                while len(received) < len(payload) and (chunk := conn.recv(4096)):
                    received += chunk
    except OSError:  # refused: reset, or an SSL error instead of the clean end of the stream
        pass
    # nginx logs a refusal before it closes the connection, so the line is there by now.
    with nginx.log.open("rb") as log:
        log.seek(mark)
        return Attempt(received == payload, log.read().decode(errors="replace"))


NO_CERT = "client sent no required SSL certificate"
REVOKED = "client SSL certificate verify error: (23:certificate revoked)"


def test_nginx_requires_an_issued_unrevoked_client_certificate(
    site: Site, tmp_path: Path, nginx_factory: Any, server_pki: tuple[Certificate, Certificate]
):
    good_dir, bad_dir = site.issue("GOOD"), site.issue("BAD")
    site.ok("revoke", "BAD")
    client_ca, crl = site.host_files(tmp_path / "host")
    server_ca = server_pki[0].cert
    good = (good_dir / "GOOD.crt", good_dir / "GOOD.key")
    good_chain = (good_dir / "GOOD-chain.pem", good_dir / "GOOD.key")
    bad = (bad_dir / "BAD.crt", bad_dir / "BAD.key")
    nginx = nginx_factory(client_ca, crl)

    for tls in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        anonymous = connect(nginx, server_ca, None, tls)
        assert not anonymous.echoed and NO_CERT in anonymous.log, (tls, anonymous.log)
        for client in (good, good_chain):
            accepted = connect(nginx, server_ca, client, tls)
            assert accepted.echoed and "verify error" not in accepted.log, (tls, accepted.log)
        refused = connect(nginx, server_ca, bad, tls)
        assert not refused.echoed and REVOKED in refused.log, (tls, refused.log)

    # Revoked while nginx runs: refused once the host has written the new CRL and reloaded nginx.
    site.ok("revoke", "GOOD")
    assert connect(nginx, server_ca, good).echoed  # nginx reads the CRL at (re)load only
    site.host_files(tmp_path / "host")
    assert nginx.test().returncode == 0
    nginx.reload()
    after = connect(nginx, server_ca, good)
    assert not after.echoed and REVOKED in after.log, after.log


def test_nginx_with_an_absent_empty_expired_or_foreign_crl(
    site: Site, tmp_path: Path, nginx_factory: Any, server_pki: tuple[Certificate, Certificate]
):
    """What the host must know: nginx refuses to start on an empty or missing CRL file; without
    ssl_crl it accepts revoked certificates; an expired CRL, or one of another CA, refuses everyone."""
    good_dir, bad_dir = site.issue("GOOD"), site.issue("BAD")
    site.ok("revoke", "BAD")
    client_ca, crl = site.host_files(tmp_path / "host")
    server_ca = server_pki[0].cert
    good = (good_dir / "GOOD.crt", good_dir / "GOOD.key")
    bad = (bad_dir / "BAD.crt", bad_dir / "BAD.key")

    empty = tmp_path / "empty.pem"
    empty.write_text("")
    for unusable, why in ((empty, "no certificate or crl found"), (tmp_path / "absent.pem", "No such file")):
        proc = nginx_factory(client_ca, unusable, start=False).test()
        assert proc.returncode != 0 and why in proc.stderr, proc.stderr
    assert nginx_factory(client_ca, crl, start=False).test().returncode == 0  # the control

    # No ssl_crl at all: nginx starts, and a revoked certificate gets in. The host must never omit it.
    without = nginx_factory(client_ca, None)
    assert connect(without, server_ca, bad).echoed

    # A CRL past its nextUpdate refuses every client, the good one too: why the CRL lives 5 years.
    ca_secret = site.secret(CA_SECRET)
    ca = x509.load_pem_x509_certificate(ca_secret["ca_cert"].encode())
    ca_key = serialization.load_pem_private_key(ca_secret["ca_key"].encode(), password=None)
    now = datetime.datetime.now(datetime.UTC)
    expired = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - datetime.timedelta(days=2))
        .next_update(now - datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    expired_file = tmp_path / "expired-crl.pem"
    expired_file.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    stale = connect(nginx_factory(client_ca, expired_file), server_ca, good)
    assert not stale.echoed and "(12:CRL has expired)" in stale.log, stale.log

    # ca_cert and crl must come from the same secret version: a CRL of another CA refuses everyone.
    other = make_ca(tmp_path / "other", "another CA")
    other_crl = tmp_path / "other-crl.pem"
    other_key = serialization.load_pem_private_key(other.key.read_bytes(), password=None)
    other_crl.write_bytes(
        x509.CertificateRevocationListBuilder()
        .issuer_name(load_cert(other.cert).subject)
        .last_update(now)
        .next_update(now + datetime.timedelta(days=30))
        .sign(other_key, hashes.SHA256())  # type: ignore[arg-type]
        .public_bytes(serialization.Encoding.PEM)
    )
    foreign = connect(nginx_factory(client_ca, other_crl), server_ca, good)
    assert not foreign.echoed and "(3:unable to get certificate CRL)" in foreign.log, foreign.log

    # A certificate of the client CA for servers (serverAuth, not clientAuth) is no client certificate.
    ca_files = Certificate(tmp_path / "ca" / "ca.crt", tmp_path / "ca" / "ca.key")
    ca_files.cert.parent.mkdir()
    ca_files.cert.write_text(ca_secret["ca_cert"])
    ca_files.key.write_text(ca_secret["ca_key"])
    server_like = pki_issue(tmp_path / "ca", ca_files, "SERVERISH")
    nginx = nginx_factory(client_ca, crl)
    wrong_use = connect(nginx, server_ca, (server_like.cert, server_like.key))
    assert not wrong_use.echoed and "(26:unsuitable certificate purpose)" in wrong_use.log, wrong_use.log
    assert connect(nginx, server_ca, good).echoed  # the control: same nginx, a clientAuth certificate


# The placeholder the host writes while <name>/dicom-clients has no value yet, run as the doc gives it.
DOC = ROOT / "docs" / "dicom-client-certificates.md"
PLACEHOLDER_SH = DOC.read_text().split("### Before the first `issue`", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]


def test_placeholder_before_any_client_ca_starts_nginx_and_refuses_everyone(
    site: Site, tmp_path: Path, nginx_factory: Any, server_pki: tuple[Certificate, Certificate]
):
    folder = tmp_path / "placeholder"
    folder.mkdir()
    proc = subprocess.run(["sh", "-c", PLACEHOLDER_SH], cwd=folder, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["client-ca.pem", "client-crl.pem"]  # no key left
    nginx = nginx_factory(folder / "client-ca.pem", folder / "client-crl.pem")
    server_ca = server_pki[0].cert
    anonymous = connect(nginx, server_ca, None)
    assert not anonymous.echoed and NO_CERT in anonymous.log
    # Even a certificate of the site's real client CA is refused until the host has the real files ...
    good_dir = site.issue("GOOD")
    good = (good_dir / "GOOD.crt", good_dir / "GOOD.key")
    early = connect(nginx, server_ca, good)
    assert not early.echoed and "(21:unable to verify the first certificate)" in early.log, early.log
    # ... and accepted once it has (the control that the placeholder, not the setup, refused it).
    site.host_files(folder)
    nginx.reload()
    assert connect(nginx, server_ca, good).echoed
