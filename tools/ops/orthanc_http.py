"""The one HTTP client of Orthanc's REST API for Orthweb's commands and harness (on urllib3).

Every caller (``make validate``, ``make recover``, the local site of the tests) talks to Orthanc
through the site's front door the same way: HTTPS from TLS 1.2 up, the site CA (or the system's
CAs) as the only trust, optionally a client certificate, HTTP Basic credentials, no retries, a
timeout on every call, and an answer whatever its status (a 401 or a 403 is a result, not an
exception). A connection that cannot be made, a TLS failure or a timeout raises ``Unreachable``
(an OSError) naming the address.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import urllib3

# Redirects are followed (the start page's), within the site; nothing is retried.
RETRIES = urllib3.Retry(
    total=None, connect=0, read=0, status=0, other=0, redirect=5, raise_on_redirect=False, raise_on_status=False
)


class Unreachable(OSError):
    """No HTTP answer: the connection, the TLS handshake or the wait for the answer failed."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


def tls_context(ca: Path | None, client_cert: Path | None = None, client_key: Path | None = None) -> ssl.SSLContext:
    """TLS 1.2 and up, trusting ``ca`` (the system's CAs without it), with a client certificate if given."""
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert and client_key:
        context.load_cert_chain(str(client_cert), str(client_key))
    return context


def basic(user: str, password: str) -> str:
    """The value of an HTTP Basic Authorization header."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class OrthancHttp:
    """Orthanc at ``base_url`` (https://host:port, or http:// for an Orthanc reached directly)."""

    def __init__(
        self,
        base_url: str,
        *,
        context: ssl.SSLContext | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float = 60,
    ):
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.timeout = timeout
        https = self.base_url.startswith("https://")
        self._pool = urllib3.PoolManager(retries=RETRIES, ssl_context=context if https else None)

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        anonymous: bool = False,
        timeout: float | None = None,
        redirect: bool = True,
    ) -> Answer:
        """One call; ``auth`` replaces the client's credentials for it, ``anonymous`` sends none,
        ``redirect`` False answers a redirect itself. Only reads follow one: a body (an upload, PHI)
        is never sent again to wherever a redirect points."""
        sent = dict(headers or {})
        who = None if anonymous else (auth or self.auth)
        if who:
            sent["Authorization"] = basic(*who)
        try:
            answer = self._pool.request(
                method,
                self.base_url + path,
                body=data,
                headers=sent,
                timeout=timeout or self.timeout,
                redirect=redirect and method in ("GET", "HEAD"),
            )
        except urllib3.exceptions.HTTPError as exc:
            raise Unreachable(f"no answer from {self.base_url}: {exc}") from exc
        return Answer(answer.status, answer.data, answer.headers)  # case-insensitive names
