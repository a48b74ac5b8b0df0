"""The host's AWS client: Secrets Manager and STS over HTTPS with Signature Version 4, standard
library only (the host's python3; Amazon Linux 2023 ships Python 3.9).

One process makes every call of a run: no AWS CLI start per call (about 0.5 CPU-s each), and no
secret in a process argument. Credentials come from the environment when set (off EC2: the
emulator's placeholder keys), else from the instance role through IMDSv2, as the AWS SDKs do.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET  # noqa: S405 - parses AWS's own STS answers, not untrusted input
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

IMDS = "http://169.254.169.254"
TIMEOUT = 20
# Connection failures, throttling and 5xx answers are tried again: 3 attempts, 1 s then 2 s apart.
ATTEMPTS = 3
RETRYABLE = {"ThrottlingException", "Throttling", "RequestLimitExceeded", "InternalServiceError", "InternalFailure"}


class AwsError(Exception):
    """AWS answered with an error (``code`` as AWS names it, e.g. ResourceNotFoundException), or
    could not be reached (code ``Unreachable``)."""

    def __init__(self, operation: str, code: str, message: str) -> None:
        super().__init__(f"{code} when calling the {operation} operation: {message}")
        self.operation, self.code, self.message = operation, code, message


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = ""
    token: str = ""

    def __repr__(self) -> str:  # never print the secret parts
        return f"Credentials({self.access_key[:4]}...)"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    service: str,
    region: str,
    credentials: Credentials,
    now: datetime.datetime | None = None,
) -> dict[str, str]:
    """``headers`` plus X-Amz-Date, the session token and the SigV4 Authorization header."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    parts = urllib.parse.urlsplit(url)
    signed = {k.lower(): " ".join(v.split()) for k, v in headers.items()}
    signed["host"] = parts.netloc
    signed["x-amz-date"] = amz_date
    if credentials.token:
        signed["x-amz-security-token"] = credentials.token
    names = sorted(signed)
    query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    )
    canonical = "\n".join(
        [
            method,
            urllib.parse.quote(parts.path or "/", safe="/-_.~"),
            query,
            "".join(f"{n}:{signed[n]}\n" for n in names),
            ";".join(names),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{credentials.secret_key}".encode(), day), region), service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = dict(headers)
    out["X-Amz-Date"] = amz_date
    if credentials.token:
        out["X-Amz-Security-Token"] = credentials.token
    out["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return out


class Imds:
    """Instance metadata through IMDSv2 (a session token first; the host's hop limit is 1)."""

    def __init__(self, endpoint: str = IMDS) -> None:
        self.endpoint = endpoint.rstrip("/")
        # Never through a proxy from the environment (as the AWS SDKs do): metadata is link-local.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _token(self) -> str:
        request = urllib.request.Request(  # noqa: S310 - the link-local metadata service
            f"{self.endpoint}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
        )
        with self.opener.open(request, timeout=5) as answer:
            return str(answer.read().decode())

    def get(self, path: str) -> str:
        request = urllib.request.Request(  # noqa: S310 - the link-local metadata service
            f"{self.endpoint}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": self._token()}
        )
        with self.opener.open(request, timeout=5) as answer:
            return str(answer.read().decode())

    def role_credentials(self) -> Credentials:
        role = self.get("iam/security-credentials/").split()[0]
        data = json.loads(self.get(f"iam/security-credentials/{role}"))
        return Credentials(data["AccessKeyId"], data["SecretAccessKey"], data["Token"])


def credentials_from(env: Mapping[str, str], imds: Imds) -> Callable[[], Credentials]:
    """The environment's keys when set, else the instance role's (fetched once, on first use)."""
    if env.get("AWS_ACCESS_KEY_ID"):
        found = Credentials(
            env["AWS_ACCESS_KEY_ID"], env.get("AWS_SECRET_ACCESS_KEY", ""), env.get("AWS_SESSION_TOKEN", "")
        )
        return lambda: found
    cache: dict[str, Credentials] = {}

    def from_role() -> Credentials:
        if "role" not in cache:
            try:
                cache["role"] = imds.role_credentials()
            except (OSError, ValueError, KeyError, IndexError) as exc:
                raise AwsError("GetCredentials", "NoCredentials", f"no instance role credentials: {exc}") from None
        return cache["role"]

    return from_role


class Aws:
    """Signed calls to one region; ``endpoint`` (the emulator's, off EC2) replaces every service's."""

    def __init__(self, region: str, credentials: Callable[[], Credentials], endpoint: str = "") -> None:
        self.region, self.credentials, self.endpoint = region, credentials, endpoint.rstrip("/")

    def url(self, service: str) -> str:
        if self.endpoint:
            return self.endpoint + "/"
        suffix = "amazonaws.com.cn" if self.region.startswith("cn-") else "amazonaws.com"
        return f"https://{service}.{self.region}.{suffix}/"

    def _send(self, service: str, operation: str, headers: dict[str, str], body: bytes) -> bytes:
        url = self.url(service)
        for attempt in range(1, ATTEMPTS + 1):
            signed = sign(
                "POST", url, headers, body, service=service, region=self.region, credentials=self.credentials()
            )
            request = urllib.request.Request(url, data=body, headers=signed, method="POST")  # noqa: S310 - AWS endpoints
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310 - AWS endpoints
                    return bytes(answer.read())
            except urllib.error.HTTPError as exc:
                error = _error(operation, exc.code, exc.read())
                if attempt == ATTEMPTS or not (exc.code >= 500 or error.code in RETRYABLE):
                    raise error from None
            except (urllib.error.URLError, OSError) as exc:
                if attempt == ATTEMPTS:
                    reason = getattr(exc, "reason", exc)
                    raise AwsError(operation, "Unreachable", f"could not connect to {url}: {reason}") from None
            time.sleep(attempt)
        raise AssertionError("unreachable")

    def json_call(self, service: str, target: str, operation: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON-protocol call (Secrets Manager): ``target`` is the X-Amz-Target prefix."""
        headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"{target}.{operation}"}
        answer = self._send(service, operation, headers, json.dumps(payload).encode())
        result: dict[str, Any] = json.loads(answer or b"{}")
        return result

    def query_call(self, service: str, version: str, operation: str, params: Mapping[str, str]) -> ET.Element:
        """A query-protocol call (STS): form-encoded parameters, an XML answer."""
        body = urllib.parse.urlencode({"Action": operation, "Version": version, **params}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        return ET.fromstring(self._send(service, operation, headers, body))  # noqa: S314 - AWS's own answer


def _error(operation: str, status: int, body: bytes) -> AwsError:
    text = body.decode(errors="replace")
    try:
        data = json.loads(text)
        code = str(data.get("__type", "")).rsplit("#", 1)[-1]
        message = str(data.get("message") or data.get("Message") or "")
        if code:
            return AwsError(operation, code, message)
    except ValueError:
        pass
    try:
        root = ET.fromstring(text)  # noqa: S314 - AWS's own answer
        code = next((e.text or "" for e in root.iter() if e.tag.endswith("Code")), "")
        message = next((e.text or "" for e in root.iter() if e.tag.endswith("Message")), "")
        if code:
            return AwsError(operation, code, message)
    except ET.ParseError:
        pass
    return AwsError(operation, f"HTTP{status}", text[:200])


@dataclass(frozen=True)
class SecretValue:
    """A secret's current value and the version id it was read at."""

    text: str
    version: str

    def __repr__(self) -> str:  # never print the value
        return f"SecretValue(version={self.version})"


class SecretsManager:
    TARGET = "secretsmanager"

    def __init__(self, aws: Aws) -> None:
        self.aws = aws

    def get(self, secret_id: str) -> SecretValue | None:
        """The current value, or None when the secret has none yet (ResourceNotFoundException)."""
        try:
            answer = self.aws.json_call("secretsmanager", self.TARGET, "GetSecretValue", {"SecretId": secret_id})
        except AwsError as exc:
            if exc.code == "ResourceNotFoundException":
                return None
            raise
        return SecretValue(str(answer["SecretString"]), str(answer["VersionId"]))

    def put(self, secret_id: str, text: str, token: str) -> str:
        """Store a new current value; returns its version id. Raises AwsError with code
        ResourceExistsException when ``token`` was used before with another value (another host won)."""
        payload = {"SecretId": secret_id, "SecretString": text, "ClientRequestToken": token}
        answer = self.aws.json_call("secretsmanager", self.TARGET, "PutSecretValue", payload)
        return str(answer["VersionId"])


def prefix_list_cidrs(aws: Aws, prefix_list_id: str) -> list[str]:
    """The address ranges of a managed prefix list (EC2 GetManagedPrefixListEntries; S3's has a
    handful, well under one page)."""
    root = aws.query_call("ec2", "2016-11-15", "GetManagedPrefixListEntries", {"PrefixListId": prefix_list_id})
    return sorted(e.text or "" for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "cidr")


def assume_role(aws: Aws, role_arn: str, session: str, seconds: int) -> dict[str, str]:
    """Short-lived credentials of ``role_arn``: AccessKeyId, SecretAccessKey, SessionToken, Expiration."""
    root = aws.query_call(
        "sts",
        "2011-06-15",
        "AssumeRole",
        {"RoleArn": role_arn, "RoleSessionName": session, "DurationSeconds": str(seconds)},
    )
    found = {e.tag.rsplit("}", 1)[-1]: (e.text or "") for e in root.iter()}
    wanted = ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")
    if not all(found.get(k) for k in wanted):
        raise AwsError("AssumeRole", "MalformedAnswer", "the answer lacks the credentials")
    return {k: found[k] for k in wanted}
