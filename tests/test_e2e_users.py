"""Named users on the local site, end to end: `make user`'s command writes the users secret in the
AWS API emulator, the host's refresh (the real bootstrap) registers them with Orthanc and writes
their roles, and the real Orthanc (Debian's, with its Python plugin running docker/orthweb_roles.py)
behind the real nginx answers each role: allowed requests succeed, forbidden ones get 403, a
disabled user gets 401 after the refresh. The audit trail is read back from the front door's access
log (on a host, the container log the Docker awslogs driver ships to CloudWatch)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.local_site import auth, send_site
from tools.harness.dicom_sender import make_instances
from tools.harness.localsite import LocalSite
from tools.ops import users
from tools.ops.modalities import Secrets

pytestmark = pytest.mark.e2e


def _user_command(s: LocalSite, command: str, name: str, role: str = "") -> list[str]:
    """`make user ARGS="..."` against the local site (its emulator), the lines it prints."""
    return users.run(Secrets(s.sm, s.name, s.region), command, name, role)


def _password(lines: list[str]) -> str:
    return lines[0].rsplit(": ", 1)[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = LocalSite(tmp_path_factory.mktemp("users-site"))
    try:
        s.start()
        send_site(s, make_instances(1))
        yield s
    finally:
        s.stop()


def _access_log(s: LocalSite) -> list[dict]:
    return [json.loads(line) for line in (s.host().nginx_prefix / "access.log").read_text().splitlines()]


def test_each_role_gets_what_it_is_for_and_403_for_the_rest_and_a_disabled_user_401(site):
    s = site
    people = {}
    for name, role in (("vera", "viewer"), ("ulf", "uploader"), ("rita", "researcher"), ("ada", "admin")):
        people[name] = _password(_user_command(s, "add", name, role))
    s.refresh()
    study = json.loads(s.rest("/studies", auth=auth(s))[1])[0]
    instance = json.loads(s.rest("/instances", auth=auth(s))[1])[0]
    dicom = s.rest(f"/instances/{instance}/file", auth=auth(s))[1]
    requests = {
        "read a study": ("GET", f"/studies/{study}", None),
        "QIDO": ("GET", "/dicom-web/studies", None),
        "a file": ("GET", f"/instances/{instance}/file", None),
        "upload": ("POST", "/instances", dicom),
        "jobs": ("GET", "/jobs", None),
    }
    expected = {
        "vera": {"read a study": 200, "QIDO": 200, "a file": 200, "upload": 403, "jobs": 403},
        "ulf": {"read a study": 200, "QIDO": 200, "a file": 200, "upload": 200, "jobs": 403},
        "rita": {"read a study": 403, "QIDO": 200, "a file": 403, "upload": 403, "jobs": 403},
    }
    found = {
        name: {
            what: s.rest(path, auth=(name, people[name]), method=method, data=data)[0]
            for what, (method, path, data) in requests.items()
        }
        for name in expected
    }
    assert found == expected
    assert s.rest("/jobs", auth=("ada", people["ada"]))[0] == 200, (
        "a named admin has every right the front door lets through"
    )
    # Disabled: refused (401, not 403) once the refresh has run; enabled again: back.
    _user_command(s, "disable", "vera")
    assert s.rest("/system", auth=("vera", people["vera"]))[0] == 200, "until the next refresh"
    s.refresh()
    assert s.rest("/system", auth=("vera", people["vera"]))[0] == 401
    _user_command(s, "remove", "rita")
    new = _password(_user_command(s, "reset", "ulf"))
    s.refresh()
    assert s.rest("/dicom-web/studies", auth=("rita", people["rita"]))[0] == 401
    assert s.rest("/system", auth=("ulf", people["ulf"]))[0] == 401 and s.rest("/system", auth=("ulf", new))[0] == 200
    # The audit trail names the person, the method, the path without its query, the status, the address.
    deadline = time.monotonic() + 10
    while True:
        entries = _access_log(s)
        mine = [
            (e["user"], e["method"], e["path"], e["status"])
            for e in entries
            if e.get("user") in ("vera", "ulf", "rita")
        ]
        if ("vera", "GET", "/system", 401) in mine or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ("ulf", "POST", "/instances", 200) in mine and ("vera", "POST", "/instances", 403) in mine
    assert ("rita", "GET", f"/instances/{instance}/file", 403) in mine and ("vera", "GET", "/system", 401) in mine
    assert all(e.get("client") == "127.0.0.1" and "?" not in e["path"] for e in entries if e.get("user") == "vera")


def _chromium(*args: str) -> subprocess.CompletedProcess:
    """Headless Chromium (Debian's), as root in CI: no sandbox."""
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_a_viewer_opening_the_site_in_a_browser_sees_the_start_page(site, tmp_path):
    """A real browser (headless Chromium) opens https://<site>/ as a named viewer: the front door and
    Orthanc lead it to /ui/app/ (on a host Orthanc Explorer 2; here its named STAND-IN,
    tools/harness/local_ui.py), which lists the stored study. The browser trusts exactly the site's
    certificate (its public key pinned), and the assertions are on the page's DOM, not its pixels."""
    s = site
    password = _password(_user_command(s, "add", "paula", "viewer"))
    s.refresh()
    cert = x509.load_pem_x509_certificate((s.host().run / "nginx" / "site-cert.pem").read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    url = f"https://paula:{password}@127.0.0.1:{s.ports['https']}/"
    trust = f"--ignore-certificate-errors-spki-list={pin}"
    dom = _chromium(trust, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert "<title>Orthweb</title>" in page and 'name="orthweb-ui"' in page, page[:2000]
    assert 'id="count">1 studies' in page and page.count('class="study"') == 1
    shot = tmp_path / "start-page.png"
    assert _chromium(trust, f"--screenshot={shot}", "--window-size=1024,768", url).returncode == 0
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The browser's requests are in the audit trail under the viewer's name.
    assert any(e.get("user") == "paula" and e["path"] == "/ui/app/" and e["status"] == 200 for e in _access_log(s))
