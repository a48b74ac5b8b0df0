"""STAND-IN for EC2 instance metadata (IMDSv2) on a loopback port: a session token first (PUT),
then answers only to requests that carry it. ``answers`` maps a metadata path (after
/latest/meta-data/) to its text; a test changes it while the host's program polls (the Elastic IP
showing up). The host's program reads ``ORTHWEB_IMDS_ENDPOINT`` (default 169.254.169.254)."""

from __future__ import annotations

import http.server
import threading

TOKEN = "imds-session-token"  # noqa: S105 - the stand-in's own session token, not a credential


class InstanceMetadata:
    def __init__(self, answers: dict[str, str] | None = None):
        self.answers: dict[str, str] = dict(answers or {})
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
                ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                self._send(TOKEN if ok else None)

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.removeprefix("/latest/meta-data/")
                authorized = self.headers.get("X-aws-ec2-metadata-token") == TOKEN
                self._send(stand_in.answers.get(path) if authorized else None)

            def _send(self, text: str | None) -> None:
                self.send_response(200 if text is not None else 401)
                self.end_headers()
                self.wfile.write((text or "").encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> InstanceMetadata:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
