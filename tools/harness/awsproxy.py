"""STAND-IN around the AWS API emulator: a loopback HTTP proxy that one host's program talks to
instead of the emulator, so a test sees every call that host makes (operation and secret), and may
hold a call back (to order calls between hosts that race) or refuse one as AWS would (to inject a
failure). Calls it passes reach the emulator unchanged, and their answers come back unchanged.

The host's program reads ``ORTHWEB_AWS_ENDPOINT``: point it at ``proxy.endpoint``.
"""

from __future__ import annotations

import http.client
import http.server
import json
import re
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from tools.proc import free_port


@dataclass(frozen=True)
class Call:
    host: str  # the proxy's name: which host made the call
    operation: str  # e.g. GetSecretValue, PutSecretValue, AssumeRole
    secret: str  # the SecretId, when the call names one

    @property
    def kind(self) -> str:
        """The secret's name without the site prefix and AWS's random suffix (site-tls, orthanc-admin)."""
        return re.sub(r"-[A-Za-z0-9]{6}$", "", self.secret.rsplit("/", 1)[-1])


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


Forward = Callable[[], Answer]
# A handler decides what a call gets: usually forward() (maybe waiting before or after), or an
# answer of its own (a refusal).
Handler = Callable[[Call, Forward], Answer]


def refuse(operation: str, code: str = "AccessDeniedException") -> Handler:
    """Refuse every ``operation`` call the way IAM does; pass the others."""

    def handler(call: Call, forward: Forward) -> Answer:
        if call.operation != operation:
            return forward()
        body = json.dumps({"__type": code, "message": f"User is not authorized to perform {operation}"}).encode()
        return Answer(400, [("Content-Type", "application/x-amz-json-1.1")], body)

    return handler


def passthrough(call: Call, forward: Forward) -> Answer:
    return forward()


class AwsProxy:
    def __init__(self, target: str, name: str = "host", handler: Handler = passthrough):
        parts = urllib.parse.urlsplit(target)
        self.target_host, self.target_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.name, self.handler = name, handler
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> AwsProxy:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                call = proxy.parse(self.headers.get("X-Amz-Target", ""), body)
                with proxy._lock:
                    proxy.calls.append(call)

                def forward() -> Answer:
                    conn = http.client.HTTPConnection(proxy.target_host, proxy.target_port, timeout=60)
                    try:
                        conn.request("POST", self.path, body=body, headers=dict(self.headers.items()))
                        answer = conn.getresponse()
                        return Answer(answer.status, answer.getheaders(), answer.read())
                    finally:
                        conn.close()

                answer = proxy.handler(call, forward)
                self.send_response(answer.status)
                for key, value in answer.headers:
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def parse(self, target: str, body: bytes) -> Call:
        if target:  # JSON protocol (Secrets Manager)
            operation = target.rsplit(".", 1)[-1]
            try:
                secret = str(json.loads(body or b"{}").get("SecretId", ""))
            except ValueError:
                secret = ""
            return Call(self.name, operation, secret)
        form = urllib.parse.parse_qs(body.decode(errors="replace"))  # query protocol (STS)
        return Call(self.name, form.get("Action", [""])[0], "")

    def operations(self) -> list[str]:
        with self._lock:
            return [c.operation for c in self.calls]

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> AwsProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Rendezvous:
    """Points several hosts arrive at (by name), and waits until enough have."""

    def __init__(self) -> None:
        self._arrived: dict[str, set[str]] = {}
        self._cond = threading.Condition()

    def arrive(self, point: str, host: str) -> None:
        with self._cond:
            self._arrived.setdefault(point, set()).add(host)
            self._cond.notify_all()

    def wait(self, point: str, count: int, timeout: float = 60) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self._arrived.get(point, ())) >= count, timeout)

    def count(self, point: str) -> int:
        with self._cond:
            return len(self._arrived.get(point, ()))
