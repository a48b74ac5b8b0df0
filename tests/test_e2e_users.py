"""Named users on the local site, end to end: `make user`'s command writes the users secret in the
AWS API emulator, the host's refresh (the real bootstrap) registers them with Orthanc and writes
their roles, and the real Orthanc (Debian's, with its Python plugin running docker/orthweb_roles.py)
behind the real nginx answers each role: allowed requests succeed, forbidden ones get 403, a
disabled user gets 401 after the refresh. The audit trail is read back from CloudWatch Logs (the
emulator's), where the front door's lines are shipped as a host's Docker awslogs driver ships them
(tools/harness/awslogs.py, a named stand-in)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import boto3
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from config import ROOT
from tests.local_site import auth, send_site
from tools.harness import awslogs
from tools.harness.dicom_sender import make_instances
from tools.harness.localsite import LocalSite
from tools.ops import users
from tools.ops.modalities import Secrets
from tools.ops.orthanc_http import OrthancHttp
from userdata.site import ComposeValues, render_compose

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
    # The audit trail names the person, the method, the path without its query, the status, the
    # address: read back from CloudWatch Logs, where the host's Docker ships nginx's output (here the
    # awslogs STAND-IN sends the lines nginx wrote, to the group and stream compose names).
    deadline = time.monotonic() + 10
    while ("vera", "GET", "/system", 401) not in _mine(_access_log(s)) and time.monotonic() < deadline:
        time.sleep(0.2)
    entries = _shipped_audit(s)
    mine = _mine(entries)
    assert ("ulf", "POST", "/instances", 200) in mine and ("vera", "POST", "/instances", 403) in mine
    assert ("rita", "GET", f"/instances/{instance}/file", 403) in mine and ("vera", "GET", "/system", 401) in mine
    assert all(e.get("client") == "127.0.0.1" and "?" not in e["path"] for e in entries if e.get("user") == "vera")


def _mine(entries: list[dict]) -> list[tuple]:
    return [
        (e["user"], e["method"], e["path"], e["status"]) for e in entries if e.get("user") in ("vera", "ulf", "rita")
    ]


def _shipped_audit(s: LocalSite) -> list[dict]:
    """The front door's entries as an auditor reads them: from the site's container log group in
    CloudWatch Logs (the emulator's), the streams compose's tag gives nginx."""
    logs = boto3.client("logs", **s.emulator.boto_kwargs())
    group = f"/{s.name}/containers"  # modules/access.py; Terraform creates it on AWS, the test here
    try:
        logs.create_log_group(logGroupName=group)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    tag = yaml.safe_load(render_compose(ComposeValues()))["services"]["nginx"]["logging"]["options"]["tag"]
    service = tag.split("/", 1)[0]
    assert awslogs.ship_file(logs, group, service, s.host().nginx_prefix / "access.log", container="e2e-users")
    return [json.loads(m) for m in awslogs.read(logs, group, prefix=f"{service}/e2e-users")]


def _chromium(*args: str) -> subprocess.CompletedProcess:
    """Headless Chromium (Debian's), as root in CI: no sandbox."""
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_a_viewer_opening_the_site_in_a_browser_sees_the_start_page(site, tmp_path):
    """A real browser (headless Chromium) opens https://<site>/ as a named viewer: the front door and
    Orthanc lead it to /ui/app/ (on a host Orthanc Explorer 2; here its named STAND-IN,
    tools/harness/local_ui.py, built the same way: a page of the site's own script, which asks the
    REST API for the studies, and one inline script). The browser enforces the front door's
    Content-Security-Policy: the inline script is refused, the site's script and its request run.
    It trusts exactly the site's certificate (its public key pinned); the assertions are on the
    page's DOM, not its pixels."""
    s = site
    password = _password(_user_command(s, "add", "paula", "viewer"))
    s.refresh()
    cert = x509.load_pem_x509_certificate((s.host().run / "nginx" / "site-cert.pem").read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    url = f"https://paula:{password}@127.0.0.1:{s.ports['https']}/"
    trust = f"--ignore-certificate-errors-spki-list={pin}"
    # The page's script runs after the load event: virtual time lets it finish before the DOM is taken.
    dom = _chromium(trust, "--virtual-time-budget=10000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert "<title>Orthweb</title>" in page and 'name="orthweb-ui"' in page, page[:2000]
    assert 'id="count">1 studies' in page and page.count('class="study"') == 1, page[:3000]
    assert 'data-inline="ran"' not in page, "the inline script ran: the browser got no Content-Security-Policy"
    shot = tmp_path / "start-page.png"
    assert _chromium(trust, f"--screenshot={shot}", "--window-size=1024,768", url).returncode == 0
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The browser's requests are in the audit trail under the viewer's name.
    visits = {(e["path"], e["status"]) for e in _access_log(s) if e.get("user") == "paula"}
    assert {("/ui/app/", 200), ("/ui/app/app.js", 200), ("/studies", 200)} <= visits, visits


def _head(s: LocalSite, path: str, user: tuple[str, str]) -> tuple[int, Mapping[str, str]]:
    """The status and headers of a GET through the front door, a redirect answered as it is."""
    front = OrthancHttp(f"https://127.0.0.1:{s.ports['https']}", context=s.tls_context(), auth=user)
    answer = front.request(path, redirect=False)
    return answer.status, answer.headers


def test_the_viewers_get_their_policy_and_everything_else_the_strict_one(site):
    """The front door's Content-Security-Policy by path, from the real nginx: Stone Web Viewer and OHIF
    (not in Debian: Orthanc answers 404 here, and the header comes with any answer) may evaluate code
    and run WebAssembly; Orthanc Explorer 2, the REST API and the rest may run only the site's own
    script files. Both keep data, plug-ins and framing to the site."""
    s = site
    viewer = ("vic", _password(_user_command(s, "add", "vic", "viewer")))
    s.refresh()
    policies = {
        path: _head(s, path, viewer)[1]["Content-Security-Policy"]
        for path in ("/stone-webviewer/index.html", "/ohif/viewer", "/ui/app/", "/studies", "/stone-webviewer-not/x")
    }
    for path, policy in policies.items():
        directives = dict((d.split(" ", 1) + [""])[:2] for d in policy.split("; "))
        assert directives["connect-src"] == "'self'" and directives["object-src"] == "'none'", path
        assert directives["frame-ancestors"] == "'self'" and directives["default-src"] == "'self'", path
        viewer_path = path.startswith(("/stone-webviewer/", "/ohif/"))
        expected = "'self' 'unsafe-inline' 'unsafe-eval' 'wasm-unsafe-eval'" if viewer_path else "'self'"
        assert directives["script-src"] == expected, path
    # /ui/app goes to /ui/app/ by a relative redirect (Orthanc Explorer 2's inline script is refused).
    status, headers = _head(s, "/ui/app", viewer)
    assert status == 301 and headers["Location"] == "/ui/app/"
    assert _head(s, "/ui/app?study=1.2.3", viewer)[1]["Location"] == "/ui/app/?study=1.2.3", "the query is kept"


@pytest.fixture(scope="module")
def operator_python(tmp_path_factory) -> Path:
    """A virtualenv with the [operator] category of Pipfile.lock alone (its exact versions, hashes
    checked by pip): what an operator's laptop installs for the commands, and no dev tool."""
    folder = tmp_path_factory.mktemp("operator")
    lock = json.loads((ROOT / "Pipfile.lock").read_text())["operator"]
    requirements = folder / "requirements.txt"
    requirements.write_text(
        "".join(
            f"{name}{spec['version']} " + " ".join(f"--hash={h}" for h in spec["hashes"]) + "\n"
            for name, spec in sorted(lock.items())
        )
    )
    venv = folder / "venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--require-hashes"]
    installed = subprocess.run([*pip, "-r", str(requirements)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-2000:]
    return venv / "bin" / "python"


def test_an_operator_install_without_dev_packages_runs_the_commands_against_the_local_site(
    site, operator_python, tmp_path
):
    """The operator commands with only the [operator] category installed (no pytest, moto, mypy,
    cdktf): `make validate SITE=local`, `make modality-cert SITE=local ARGS=...` and `make user
    SITE=local ARGS=list` against this local site, as `make local-up` records it."""
    listed = subprocess.run(
        [str(operator_python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True
    )
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"boto3", "cryptography", "pydicom", "pynetdicom"} <= installed
    assert not installed & {"pytest", "moto", "mypy", "ruff", "cdktf", "jsonschema", "pre-commit"}, installed
    site.record(tmp_path / "site.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON", "VIRTUAL_ENV"))}
    env["ORTHWEB_LOCALSITE_DIR"] = str(tmp_path)

    def command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(operator_python), "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )

    validate = command("tools.ops.validate", "--local")
    assert validate.returncode == 0, validate.stdout[-3000:] + validate.stderr[-3000:]
    assert "PASS" in validate.stdout and "FAIL" not in validate.stdout
    issued = command("tools.ops.modalities", "--local", "issue", "OPCT1", "--out", str(tmp_path / "certs"))
    assert issued.returncode == 0, issued.stderr[-2000:]
    listing = command("tools.ops.modalities", "--local", "list", "--json")
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert [c["name"] for c in json.loads(listing.stdout)] == ["OPCT1"]
    users_listing = command("tools.ops.users", "--local", "list")
    assert users_listing.returncode == 0 and "vera" in users_listing.stdout, users_listing.stderr[-2000:]
    # Without a local site: exit 2 and the reason, nothing else.
    env["ORTHWEB_LOCALSITE_DIR"] = str(tmp_path / "none")
    missing = command("tools.ops.modalities", "--local", "list")
    assert missing.returncode == 2 and "run make local-up first" in missing.stderr
