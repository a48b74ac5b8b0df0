"""AWS smoke run: the default profile on a real account, end to end, then gone (make aws-smoke).

    python -m tools.ops.aws_smoke [--name orthweb-smoke] [--cidr 203.0.113.7/32] [--keep]

Deploys the default profile under its own name (so it never touches your site), with the site open to
your address only and deletion protection off (so that it can be destroyed), waits for the host to
boot, runs the site validator (HTTPS, REST, C-ECHO and C-STORE over DICOM TLS, the instance read back
through REST and DICOMweb, its S3 object, clean-up), and destroys everything it built. Prints the
time of each step. Costs about one hour of the default profile (see the cost table in README).

It needs AWS credentials for the account (with rights to create the stack) and the CDKTF CLI (make
cli); it is never run in CI. Without credentials it stops before doing anything (exit 2). Exit 0 when
every step passed, 1 when one failed (the destroy is still attempted; with --keep it is not).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

from config import ROOT
from config.inputs import ConfigError, load_config

EXIT_BAD_INPUT = 2
# The host boots in a few minutes; the validator is retried until it passes or this many seconds pass.
BOOT_WAIT_SECONDS = 20 * 60
RETRY_SECONDS = 30
# AWS's own "what is my address" service, asked only when --cidr is not given.
CHECKIP = "https://checkip.amazonaws.com"


class SmokeError(RuntimeError):
    pass


def caller_account(environ: Mapping[str, str]) -> str:
    """The account of the caller's AWS credentials, or SmokeError saying how to provide them."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        session = boto3.Session()
        if session.get_credentials() is None:
            raise SmokeError(
                "no AWS credentials: set AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) for the account "
                "to deploy to, and AWS_REGION"
            )
        return str(session.client("sts").get_caller_identity()["Account"])
    except (BotoCoreError, ClientError) as exc:
        raise SmokeError(f"AWS credentials not usable: {exc}") from None


def smoke_environment(name: str, cidr: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The configuration of the smoke site, on top of the caller's environment."""
    return {
        **environ,
        "ORTHWEB_NAME": name,
        "ORTHWEB_WEB_CLIENT_CIDRS": cidr,
        "ORTHWEB_DICOM_CLIENT_CIDRS": cidr,
        "ORTHWEB_DB_DELETION_PROTECTION": "false",
        "ORTHWEB_ALLOW_DATA_DESTROY": "true",
    }


def my_cidr() -> str:
    with urllib.request.urlopen(CHECKIP, timeout=10) as answer:  # noqa: S310 - a fixed https URL
        address = ipaddress.ip_address(answer.read().decode().strip())
    return f"{address}/{address.max_prefixlen}"


@dataclass
class Smoke:
    env: dict[str, str]
    keep: bool = False
    timings: list[tuple[str, float, bool]] = field(default_factory=list)

    def step(self, label: str, argv: list[str], retry_for: float = 0) -> None:
        start = time.monotonic()
        while True:
            proc = subprocess.run(argv, env=self.env, cwd=ROOT)
            if proc.returncode == 0 or time.monotonic() - start > retry_for:
                break
            print(f"[aws-smoke] {label}: not yet; again in {RETRY_SECONDS}s", flush=True)
            time.sleep(RETRY_SECONDS)
        took = time.monotonic() - start
        self.timings.append((label, took, proc.returncode == 0))
        print(f"[aws-smoke] {label}: {'ok' if proc.returncode == 0 else 'FAILED'} ({took:.0f}s)", flush=True)
        if proc.returncode != 0:
            raise SmokeError(f"{label} failed (exit {proc.returncode})")

    def go(self) -> int:
        py, cdktf = sys.executable, [sys.executable, "-m", "tools.ops.terraform", "cdktf"]
        failed = False
        try:
            self.step("synth", [py, "main.py"])
            self.step("deploy", [*cdktf, "deploy", "--auto-approve"])
            # The first pass waits for the boot: the validator fails until the host answers.
            self.step("boot and validate", [py, "-m", "tools.ops.validate"], retry_for=BOOT_WAIT_SECONDS)
        except SmokeError as exc:
            print(f"[aws-smoke] {exc}", file=sys.stderr)
            failed = True
        finally:
            if not self.keep:
                try:
                    self.step("destroy", [*cdktf, "destroy", "--auto-approve"])
                except SmokeError as exc:
                    print(f"[aws-smoke] {exc}: destroy it yourself (make destroy with the same name)", file=sys.stderr)
                    failed = True
        print("[aws-smoke] " + ", ".join(f"{label} {took:.0f}s" for label, took, _ in self.timings))
        return 1 if failed else 0


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = dict(os.environ if environ is None else environ)
    p = argparse.ArgumentParser(prog="python -m tools.ops.aws_smoke", description=__doc__.split("\n")[0])
    p.add_argument("--name", default="orthweb-smoke", help="the smoke site's name (default: orthweb-smoke)")
    p.add_argument("--cidr", help="your address, to which the site is opened (default: asked of checkip.amazonaws.com)")
    p.add_argument("--keep", action="store_true", help="leave the site up (destroy it yourself)")
    a = p.parse_args(argv)
    try:
        account = caller_account(environ)
        cidr = a.cidr or my_cidr()
        ipaddress.ip_network(cidr)
        load_config(ROOT, smoke_environment(a.name, cidr, environ))
    except SmokeError as exc:
        print(f"aws-smoke: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ConfigError as exc:  # a ValueError too: before the address's own
        print("aws-smoke: " + "; ".join(exc.problems), file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as exc:
        print(f"aws-smoke: --cidr: {exc}; give an address range such as 203.0.113.7/32", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"[aws-smoke] account {account}, site {a.name}, open to {cidr}", flush=True)
    return Smoke(smoke_environment(a.name, cidr, environ), keep=a.keep).go()


if __name__ == "__main__":
    sys.exit(main())
