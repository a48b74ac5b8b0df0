"""Orthweb's roles inside Orthanc: which user may make which request (Orthanc Python plugin).

Orthanc checks the password (``RegisteredUsers``, HTTP Basic behind nginx's TLS); this script,
loaded as Orthanc's ``PythonScript``, then decides what the user may do by the role the host wrote
for them (``OrthwebRoles``: user name -> role). A request the role does not allow gets 403 from
Orthanc; a user who is not registered (removed or disabled) gets 401 before this runs. The same file
runs in the production image (``orthancteam/orthanc``: its Python plugin, enabled by ``PythonScript``)
and in Debian's Orthanc with ``orthanc-python`` (the local site).

- ``viewer``: reads studies (REST and DICOMweb QIDO/WADO), Orthanc Explorer 2 and the viewers;
- ``uploader``: a viewer who also stores (``POST /instances``, DICOMweb STOW-RS);
- ``researcher``: DICOMweb queries (QIDO-RS) and metadata only: no pixel data, no files;
- ``admin``: everything the front door lets through (nginx already refuses configuration writes).

Standard library only; the filter is registered when the module is loaded inside Orthanc (where the
``orthanc`` module exists), so the rules can be tested outside it (tests/test_roles.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

ROLES = ("viewer", "uploader", "researcher", "admin")
READS = ("GET", "HEAD")
# What a viewer reads: the resources and their files, DICOMweb, the user interfaces and viewers, what
# those interfaces ask for to draw themselves, and Orthanc Explorer 2's downloads of several studies
# (GET /tools/create-archive and /tools/create-media since Orthanc 1.12.2).
VIEWER_READ = re.compile(
    r"^/(patients|studies|series|instances|dicom-web|ui|app|stone-webviewer|ohif|wsi|volview"
    r"|system|plugins|tools/(now|now-local|labels|generate-uid|dicom-conformance|create-archive|create-media)|statistics"
    r"|orthanc-explorer-2)(/|$)"
)
# POSTs an interface makes to read: the study list's search and the archive download.
VIEWER_POST = re.compile(
    r"^/(tools/find|tools/lookup|tools/count-resources|studies/[^/]+/archive|tools/create-archive)$"
)
# A store: REST upload and DICOMweb STOW-RS.
UPLOADER_POST = re.compile(r"^/(instances|dicom-web/studies(/[^/]+)?)$")
# QIDO-RS searches and metadata: no frames, rendered images, bulk data or whole-study retrieval.
RESEARCHER_READ = re.compile(
    r"^/(system|dicom-web/(studies|series|instances)"
    r"|dicom-web/studies/[^/]+/(series|instances|metadata)"
    r"|dicom-web/studies/[^/]+/series/[^/]+/(instances|metadata)"
    r"|dicom-web/studies/[^/]+/series/[^/]+/instances/[^/]+/metadata)$"
)


# The plugin SDK's OrthancPluginHttpMethod values, as the Python plugin hands them to the filter
# (a plain int in Debian's plugin 3.x, an orthanc.HttpMethod in newer ones).
HTTP_METHODS = {1: "GET", 2: "POST", 3: "PUT", 4: "DELETE"}


def method_name(value: object) -> str:
    """GET, POST, PUT or DELETE from what the filter receives ("" when it is none of them)."""
    if isinstance(value, int):
        return HTTP_METHODS.get(int(value), "")
    name = str(value).rsplit(".", 1)[-1].upper()
    return name if name in HTTP_METHODS.values() else ""


def normalized(uri: str) -> str:
    """The path as Orthanc routes it: percent-decoded, no repeated or trailing slashes."""
    path = urllib.parse.unquote(uri.split("?", 1)[0])
    path = re.sub(r"/{2,}", "/", path)
    return path.rstrip("/") or "/"


def allowed(role: str, method: str, uri: str) -> bool:
    """Whether ``role`` may make the request ``method uri`` (module docstring)."""
    path, method = normalized(uri), method.upper()
    if role == "admin":
        return True
    if method in READS and path == "/":
        return role in ROLES  # the start page: Orthanc Explorer 2 redirects it to the UI
    if role in ("viewer", "uploader"):
        if method in READS and VIEWER_READ.match(path):
            return True
        if method == "POST" and VIEWER_POST.match(path):
            return True
        return role == "uploader" and method == "POST" and bool(UPLOADER_POST.match(path))
    if role == "researcher":
        return method in READS and bool(RESEARCHER_READ.match(path))
    return False


def basic_user(headers: Mapping[str, str]) -> str:
    """The user name of an HTTP Basic Authorization header ("" when there is none)."""
    value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    if not value.startswith("Basic "):
        return ""
    try:
        return base64.b64decode(value[6:], validate=True).decode("utf-8").split(":", 1)[0]
    except (binascii.Error, UnicodeDecodeError):
        return ""


def install(orthanc: Any) -> None:
    """Register the filter with Orthanc's Python plugin module ``orthanc``."""
    roles: Mapping[str, str] = json.loads(orthanc.GetConfiguration()).get("OrthwebRoles", {})

    def request_filter(uri: str, **request: object) -> bool:
        method = method_name(request.get("method"))
        user = basic_user(request.get("headers") or {})  # type: ignore[arg-type]
        permitted = allowed(roles.get(user, ""), method, uri)
        if not permitted:
            orthanc.LogWarning(f"orthweb-roles: refused {method} {normalized(uri)} to {user or 'nobody'}")
        return permitted

    orthanc.RegisterIncomingHttpRequestFilter(request_filter)


try:
    import orthanc as _orthanc  # type: ignore[import-not-found]  # exists only inside Orthanc
except ImportError:
    _orthanc = None
if _orthanc is not None:
    install(_orthanc)
