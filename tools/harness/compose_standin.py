"""STAND-IN for ``docker`` on a host booted under real systemd (tools/harness/systemd_host.py).

Docker cannot run here and no image can be pulled, so ``docker compose`` as orthweb.service and the
refresh call it starts the real nginx and Orthanc processes instead of the images, each as a
transient systemd unit (as containers live in the Docker daemon's cgroup, not in the caller's):

- ``compose ... up -d [--remove-orphans]``: Orthanc, then nginx, unless already running;
- ``compose ... up -d --force-recreate --no-deps orthanc``: a new Orthanc (new credentials, config);
- ``compose ... exec -T nginx nginx -s reload``: nginx re-reads its certificate and client files;
- ``compose ... down``: both stopped.

They run from what the host's bootstrap wrote, as the containers would: /etc/orthweb/orthanc.json
with the secret files of /run/orthweb/secrets merged in and Orthanc's credentials file, and the
site certificate and client files of /run/orthweb/nginx. Ports, and the emulator's address for the
S3 stand-in plugin, come from /etc/orthweb-standin.json (written by the test). Anything else exits 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tools.harness.localsite import native_nginx_conf, native_orthanc_config
from tools.proc import wait_for_port
from userdata.host.bootstrap import Settings

SETTINGS = Path("/etc/orthweb-standin.json")
STATE = Path("/var/lib/orthweb-standin")
# The host's folders, where the host program keeps them (its defaults: the one place they are written in Python).
ETC, RUN = Settings().etc, Settings().run
UNITS = {"orthanc": "orthweb-standin-orthanc", "nginx": "orthweb-standin-nginx"}


def _settings() -> dict:
    return json.loads(SETTINGS.read_text())


def _active(service: str) -> bool:
    return subprocess.run(["systemctl", "is-active", "--quiet", UNITS[service]]).returncode == 0


def _stop(service: str) -> None:
    subprocess.run(["systemctl", "stop", UNITS[service]], capture_output=True)
    subprocess.run(["systemctl", "reset-failed", UNITS[service]], capture_output=True)


def _run_unit(service: str, command: list[str], env: dict[str, str]) -> None:
    props = [f"--setenv={k}={v}" for k, v in env.items()]
    subprocess.run(
        ["systemd-run", f"--unit={UNITS[service]}", "--collect", "-p", "Restart=no", *props, *command],
        check=True,
        capture_output=True,
    )


def start_orthanc() -> None:
    s = _settings()
    STATE.mkdir(parents=True, exist_ok=True)
    config = native_orthanc_config(
        json.loads((ETC / "orthanc.json").read_text()),
        RUN / "secrets",
        http_port=s["orthanc_http"],
        dicom_port=s["orthanc_dicom"],
        storage_dir=STATE / "orthanc-db",
        s3_endpoint=s["s3_endpoint"],
        modality_ca=ETC / "modality-ca.pem",
        roles_script=ETC / "orthweb_roles.py",  # where the bundle installs it
    )
    # As the image does: the merged configuration (secrets included) on tmpfs, root only.
    path = RUN / "standin-orthanc.json"
    path.write_text(json.dumps(config, indent=1))
    path.chmod(0o600)
    env = {
        "TCP_NODELAY": "1",
        "AWS_SHARED_CREDENTIALS_FILE": str(RUN / "aws" / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    _run_unit("orthanc", ["/usr/sbin/Orthanc", str(path)], env)
    wait_for_port(s["orthanc_http"], timeout=60)


def _nginx_prefix() -> Path:
    return STATE / "nginx"


def start_nginx() -> None:
    s = _settings()
    prefix = _nginx_prefix()
    (prefix / "temp").mkdir(parents=True, exist_ok=True)
    files = RUN / "nginx"
    conf = native_nginx_conf(prefix, s, files, (files / "client-ca.pem").exists())
    (prefix / "nginx.conf").write_text(conf)
    _run_unit(
        "nginx", ["/usr/sbin/nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"], {}
    )
    wait_for_port(s["https"], timeout=30)


def reload_nginx() -> None:
    prefix = _nginx_prefix()
    subprocess.run(["/usr/sbin/nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-s", "reload"], check=True)
    time.sleep(0.5)  # the signal returns at once; the new workers follow


def compose(args: list[str]) -> int:
    # Global options as orthweb.service and the bootstrap pass them: -p NAME, --env-file F, -f F.
    rest = list(args)
    while rest and rest[0] in ("-p", "--env-file", "-f"):
        rest = rest[2:]
    if rest[:2] == ["up", "-d"]:
        targets = [a for a in rest[2:] if not a.startswith("-")] or ["orthanc", "nginx"]
        recreate = "--force-recreate" in rest
        for service in ("orthanc", "nginx"):
            if service not in targets:
                continue
            if recreate or not _active(service):
                _stop(service)  # the running one, or a failed unit of the same name
                {"orthanc": start_orthanc, "nginx": start_nginx}[service]()
        return 0
    if rest == ["exec", "-T", "nginx", "nginx", "-s", "reload"]:
        reload_nginx()
        return 0
    if rest[:1] == ["down"]:
        for service in ("nginx", "orthanc"):
            _stop(service)
        return 0
    print(f"docker STAND-IN: unsupported compose call: {' '.join(args)}", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    print(f"docker STAND-IN: {' '.join(argv)}", file=sys.stderr)
    if argv[:1] == ["compose"]:
        return compose(argv[1:])
    print("docker STAND-IN: only 'docker compose' is stood in for", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
