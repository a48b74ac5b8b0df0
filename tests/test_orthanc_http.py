"""The one Orthanc client (tools/ops/orthanc_http.py) against a small HTTP server on loopback:
credentials sent as Basic, every status an answer, reads follow a redirect, a body is never sent
again to where a redirect points, no answer is ``Unreachable``."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from tools.ops.orthanc_http import OrthancHttp, Unreachable, basic
from tools.proc import free_ports


class Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str, bytes]] = []

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Recorder.seen.append((self.command, self.path, self.headers.get("Authorization", ""), body))
        if self.path.startswith("/moved"):
            self.send_response(307)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status = 403 if self.path == "/forbidden" else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.seen = []
    (port,) = free_ports(1)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_credentials_statuses_and_redirects(server: str):
    client = OrthancHttp(server, auth=("ada", "s3cret"))
    assert client.request("/forbidden").status == 403, "a refusal is an answer, not an exception"
    assert client.request("/system", anonymous=True).status == 200
    read = client.request("/moved/study")
    assert read.status == 200 and read.body == b"ok", "a read follows the redirect"
    upload = client.request("/moved/instances", method="POST", data=b"DICM-PHI")
    assert upload.status == 307, "an upload is not sent again to where the redirect points"
    assert [(m, p, a, b) for m, p, a, b in Recorder.seen] == [
        ("GET", "/forbidden", basic("ada", "s3cret"), b""),
        ("GET", "/system", "", b""),
        ("GET", "/moved/study", basic("ada", "s3cret"), b""),
        ("GET", "/elsewhere", basic("ada", "s3cret"), b""),
        ("POST", "/moved/instances", basic("ada", "s3cret"), b"DICM-PHI"),
    ]


def test_no_answer_is_unreachable():
    (port,) = free_ports(1)  # nothing listens there
    with pytest.raises(Unreachable, match=f"127.0.0.1:{port}"):
        OrthancHttp(f"http://127.0.0.1:{port}", timeout=5).request("/system")
