"""The roles Orthanc enforces per user (docker/orthweb_roles.py): each role's allowed and refused
requests, in every spelling Orthanc routes the same (``//``, ``%xx``, a trailing ``/``), and the
user name read from HTTP Basic. The same rules run inside the real Orthanc in tests/test_e2e_users.py."""

from __future__ import annotations

import base64
import importlib.util

import pytest

from config import ROOT

# docker/ holds the application's files, not a package: the script is loaded from its path, as Orthanc does.
_spec = importlib.util.spec_from_file_location("orthweb_roles", ROOT / "docker" / "orthweb_roles.py")
assert _spec and _spec.loader
roles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(roles)
ROLES, allowed, basic_user, normalized = roles.ROLES, roles.allowed, roles.basic_user, roles.normalized

STUDY = "/dicom-web/studies/1.2.3"
CASES = [
    # (method, path, roles allowed)
    ("GET", "/", set(ROLES)),  # the start page (Orthanc Explorer 2 redirects it to /ui/app/)
    ("GET", "/studies", {"viewer", "uploader", "admin"}),
    ("GET", "/instances/abc/file", {"viewer", "uploader", "admin"}),
    ("GET", "/ui/app/", {"viewer", "uploader", "admin"}),
    ("GET", "/stone-webviewer/index.html", {"viewer", "uploader", "admin"}),
    ("GET", "/system", set(ROLES)),
    ("POST", "/tools/find", {"viewer", "uploader", "admin"}),
    # Orthanc Explorer 2's download of several studies (a ZIP, a DICOMDIR), by GET since Orthanc 1.12.2.
    ("GET", "/tools/create-archive?resources=a,b", {"viewer", "uploader", "admin"}),
    ("GET", "/tools/create-media?resources=a,b", {"viewer", "uploader", "admin"}),
    ("GET", "/dicom-web/studies", set(ROLES)),  # QIDO-RS
    ("GET", f"{STUDY}/series", set(ROLES)),
    ("GET", f"{STUDY}/metadata", set(ROLES)),
    ("GET", f"{STUDY}/series/4.5/instances/6.7/metadata", set(ROLES)),
    ("GET", STUDY, {"viewer", "uploader", "admin"}),  # WADO-RS: the study's files
    ("GET", f"{STUDY}/series/4.5/instances/6.7/frames/1", {"viewer", "uploader", "admin"}),
    ("GET", f"{STUDY}/rendered", {"viewer", "uploader", "admin"}),
    ("POST", "/instances", {"uploader", "admin"}),
    ("POST", "/dicom-web/studies", {"uploader", "admin"}),  # STOW-RS
    ("DELETE", "/studies/abc", {"admin"}),
    ("PUT", "/studies/abc/metadata/1024", {"admin"}),
    ("POST", "/modalities/PACS/store", {"admin"}),
    ("POST", "/tools/execute-script", {"admin"}),
    ("POST", "/studies/abc/anonymize", {"admin"}),
    ("GET", "/jobs", {"admin"}),
    ("GET", "/modalities", {"admin"}),
    ("GET", "/peers", {"admin"}),
    ("GET", "/tools/log-level", {"admin"}),
]


@pytest.mark.parametrize(("method", "path", "roles"), CASES, ids=[f"{m} {p}" for m, p, _ in CASES])
def test_each_role_may_do_what_it_is_for_and_nothing_else(method, path, roles):
    assert {r for r in ROLES if allowed(r, method, path)} == roles
    assert not allowed("", method, path) and not allowed("nurse", method, path), "no role, no access"


@pytest.mark.parametrize(
    "spelling", ["//dicom-web//studies/1.2.3", "/dicom-web/%73tudies/1.2.3/", "/dicom-web/studies/1.2.3?x=1"]
)
def test_the_rules_see_the_path_as_orthanc_routes_it(spelling):
    assert normalized(spelling) == "/dicom-web/studies/1.2.3"
    assert not allowed("researcher", "GET", spelling), "WADO for a researcher, however spelt"


def test_the_method_as_the_plugin_hands_it_over():
    import enum

    class HttpMethod(enum.IntEnum):  # as a newer Python plugin's orthanc.HttpMethod
        GET = 1
        POST = 2

    assert [roles.method_name(v) for v in (1, 2, 3, 4, 5)] == ["GET", "POST", "PUT", "DELETE", ""]
    assert roles.method_name(HttpMethod.POST) == "POST" and roles.method_name("HttpMethod.DELETE") == "DELETE"


def test_the_user_comes_from_http_basic():
    token = base64.b64encode(b"alice:pa:ss").decode()
    assert basic_user({"Authorization": f"Basic {token}"}) == "alice"
    assert basic_user({"authorization": f"Basic {token}"}) == "alice"
    assert (
        basic_user({"authorization": "Bearer x"}) == basic_user({}) == basic_user({"authorization": "Basic !!"}) == ""
    )
