"""A host booted by real systemd: a Debian root made once with mmdebstrap (cached under build/),
booted as a container with ``systemd-nspawn -b`` (systemd as its PID 1) and driven with
``nsenter``. cloud-init (NoCloud) reads the real rendered user data in it, and the real units run.

Each ``Machine`` boots the cached root through an overlay (its own upper folder), so a test module
gets a clean host and keeps its changes across a reboot (power off, boot again: /run is new, the
disk is not). The network is this machine's (no private network): the AWS API emulator and the
TLS-only PostgreSQL on loopback are reachable inside.

What cannot be real here, each a named STAND-IN (see ``install_standins``):
- EC2 itself: no instance metadata (the Elastic IP wait), no Amazon Linux (dnf packages, the
  compose download, the CloudWatch agent): the boot runs every other step (``OFF_EC2_BOOT_STEPS``);
- AWS: the emulator's address and the credentials of a host role session (the stack's host role,
  IAM enforced: tools/harness/localsite.py ``under_stack_roles``), given to every unit through
  systemd's DefaultEnvironment (on EC2 the host finds the real endpoints and its role's credentials
  in instance metadata itself);
- Docker: a ``docker.service`` that only says it started, and a ``docker`` command whose
  ``compose`` starts the real nginx and Orthanc as transient systemd units (tools/harness/compose_standin.py);
- iptables: this container shares the machine's network, so the containers' egress rules would
  filter the machine itself; ``iptables`` and ``iptables-restore`` record what they are given in
  /var/lib/orthweb-standin/iptables.log (the rules themselves are proven with the real iptables
  in network namespaces: tests/test_egress.py).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from config import ROOT

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What an Orthweb host has that the boot uses (cloud-init, python3 with cryptography, psql, awscli
# for the boot bundle, curl), and what the compose stand-in runs in place of the images (nginx with
# the stream module, Orthanc with its PostgreSQL, DICOMweb and Python plugins, boto3 for the S3 stand-in).
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "procps",
    "util-linux",
    "cloud-init",
    "python3",
    "python3-cryptography",
    "openssl",
    "postgresql-client-15",
    "awscli",
    "curl",
    "ca-certificates",
    "nginx-light",
    "libnginx-mod-stream",
    "orthanc",
    "orthanc-postgresql",
    "orthanc-python",
    "orthanc-dicomweb",
    "python3-boto3",
)
# The packages' own services would start on boot and take this machine's ports 80, 8042 and 4242.
MASKED = ("nginx.service", "orthanc.service")
CACHE = ROOT / "build" / "systemd-root"
SOURCE_MOUNT = "/opt/orthweb-src"
STANDIN_STATE = "/var/lib/orthweb-standin"
IPTABLES_LOG = f"{STANDIN_STATE}/iptables.log"


class MachineError(RuntimeError):
    """The container did not boot, or a unit did not reach its state in time; the message says which."""


def root_key() -> str:
    return hashlib.sha256(json.dumps([SUITE, MIRROR, PACKAGES, MASKED]).encode()).hexdigest()[:16]


def host_root(cache: Path = CACHE) -> Path:
    """The cached root for the current package list, made with mmdebstrap when missing (about 45 s;
    one builder at a time, others wait for it)."""
    root = cache / root_key() / "root"
    if (root / "etc" / "os-release").exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "etc" / "os-release").exists():
            return root
        partial = cache / f"{root_key()}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        build = partial / "root"
        proc = subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, str(build), MIRROR],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise MachineError(f"mmdebstrap failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        subprocess.run(["systemctl", f"--root={build}", "mask", *MASKED], check=True, capture_output=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        os.rename(build, root)
        shutil.rmtree(partial, ignore_errors=True)
    return root


class Machine:
    """One host: ``mount()`` the overlay, write files with ``write()``, ``boot()``, ``run()`` commands
    inside, ``poweroff()``; ``close()`` unmounts. ``binds`` are host folders mounted read-only."""

    def __init__(self, root: Path, workdir: Path, name: str = "orthweb-host", binds: Mapping[str, str] | None = None):
        self.root, self.workdir, self.name = root, workdir, name
        self.binds = dict(binds or {})
        self.merged = workdir / "merged"
        self.process: subprocess.Popen | None = None
        self.leader = 0
        self.boots = 0

    def mount(self) -> Machine:
        for folder in ("upper", "work", "merged"):
            (self.workdir / folder).mkdir(parents=True, exist_ok=True)
        options = f"lowerdir={self.root},upperdir={self.workdir / 'upper'},workdir={self.workdir / 'work'}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.merged)], check=True)
        return self

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """A file on the host's disk (before or between boots)."""
        target = self.merged / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def boot(self, timeout: float = 60) -> Machine:
        if self.process is not None:
            raise MachineError("already running")
        log = open(self.workdir / f"console-{self.boots}.log", "ab")
        binds = [f"--bind-ro={src}:{dst}" for src, dst in self.binds.items()]
        self.process = subprocess.Popen(
            ["systemd-nspawn", "-q", "-D", str(self.merged), "-M", self.name, "--register=no", "--keep-unit"]
            + binds
            + ["-b", "--console=passive"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.boots += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MachineError(f"systemd-nspawn exited ({self.process.returncode}); see {log.name}")
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            kids = children.read_text().split() if children.exists() else []
            if kids and Path(f"/proc/{kids[0]}/root/run/systemd/private").exists():
                self.leader = int(kids[0])
                break
            time.sleep(0.1)
        else:
            raise MachineError(f"systemd did not start within {timeout}s")
        state = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=timeout).stdout.strip()
        if state not in ("running", "degraded"):
            raise MachineError(f"the system is {state!r} after boot")
        return self

    def run(
        self, *command: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess:
        """A command inside the running host (all its namespaces), as root."""
        proc = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and proc.returncode != 0:
            raise MachineError(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def unit(self, name: str) -> dict[str, str]:
        """systemd's view of a unit: ActiveState, SubState, Result, NRestarts, ..."""
        props = "ActiveState,SubState,Result,NRestarts,ExecMainStatus"
        text = self.run("systemctl", "show", "-p", props, name).stdout
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def wait_unit(self, name: str, states: Sequence[str] = ("active",), timeout: float = 120) -> dict[str, str]:
        """Until ``name`` is in one of ``states`` (ActiveState); raises with its state and journal after
        ``timeout`` seconds, so a hung boot fails the test instead of hanging it."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.unit(name)
            if info.get("ActiveState") in states:
                return info
            if time.monotonic() > deadline:
                raise MachineError(
                    f"{name} is {info.get('ActiveState')}/{info.get('SubState')} after {timeout:.0f}s, not {states}:\n"
                    f"{self.journal(tail=60)}"
                )
            time.sleep(0.5)

    def journal(self, unit: str | None = None, tail: int | None = None) -> str:
        args = ["journalctl", "--no-pager", "-o", "short-iso", "-b"]
        if unit:
            args += ["-u", unit]
        if tail:
            args += ["-n", str(tail)]
        return self.run(*args, check=False).stdout

    def poweroff(self, timeout: float = 60) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.run("systemctl", "poweroff", "--no-block", check=False)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=10)
        self.process = None
        self.leader = 0

    def close(self) -> None:
        self.poweroff()
        if self.merged.is_mount():
            subprocess.run(["umount", str(self.merged)], check=False)


# Every step of ``orthweb-bootstrap boot`` that can run off EC2 (the others are named in the module
# docstring, with what stands in for them).
OFF_EC2_BOOT_STEPS = "rds_ca services"


def install_standins(
    machine: Machine, *, aws_endpoint: str, aws_env: Mapping[str, str], ports: Mapping[str, int], s3_endpoint: str
) -> None:
    """The named STAND-INs for what a host on EC2 has and this container cannot (module docstring),
    and faster timers than a host's (a refresh 15 s after the boot and every 20 s instead of 10 and 5 minutes, a retry
    after 1 s instead of 15 s). Written onto the host's disk before its first boot."""
    env = {
        "ORTHWEB_AWS_ENDPOINT": aws_endpoint,
        **aws_env,
        "ORTHWEB_BOOT_STEPS": OFF_EC2_BOOT_STEPS,
        "ORTHWEB_BACKOFF_SLEEP": "0",
    }
    machine.write(
        "/etc/systemd/system.conf.d/orthweb-off-ec2.conf",
        "# STAND-IN: AWS is the emulator on loopback, with a host role session's keys (on EC2: the real\n"
        "# endpoints and the role's credentials from instance metadata); the boot runs the steps that\n"
        "# can run off EC2.\n"
        "[Manager]\nDefaultEnvironment=" + " ".join(f'"{k}={v}"' for k, v in env.items()) + "\n",
    )
    machine.write(
        "/etc/systemd/system/docker.service",
        "[Unit]\nDescription=STAND-IN for the Docker engine (none can run here): it only says it started\n"
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
    )
    machine.write(
        "/usr/bin/docker",
        "#!/bin/sh\n# STAND-IN for docker: compose starts the real nginx and Orthanc\n"
        "# (tools/harness/compose_standin.py).\n"
        f'PYTHONPATH={SOURCE_MOUNT} exec python3 -m tools.harness.compose_standin "$@"\n',
        mode=0o755,
    )
    for tool in ("iptables", "iptables-restore"):
        machine.write(
            f"/usr/sbin/{tool}",
            f"#!/bin/sh\n# STAND-IN for {tool}: records what it is given (module docstring).\n"
            f"mkdir -p {STANDIN_STATE}\n"
            f'{{ echo "{tool} $*"; [ {tool} = iptables-restore ] && cat; true; }} >> {IPTABLES_LOG}\n'
            # "-C" (is the jump there?) answers no, so the log also shows the jump being added.
            'case " $* " in *" -C "*) exit 1;; esac\n',
            mode=0o755,
        )
    machine.write("/etc/orthweb-standin.json", json.dumps({**ports, "s3_endpoint": s3_endpoint}))
    machine.write(
        "/etc/systemd/system/orthweb-refresh.timer.d/test-timing.conf",
        # An empty OnBootSec= resets every trigger of the unit (systemd.timer), then the test's own.
        "[Timer]\nOnBootSec=\nOnActiveSec=15s\nOnUnitActiveSec=20s\nRandomizedDelaySec=0\n",
    )
    machine.write("/etc/systemd/system/orthweb-boot.service.d/test-timing.conf", "[Service]\nRestartSec=1s\n")


def seed_cloud_init(machine: Machine, user_data: str, instance_id: str = "i-0systemd0test0001") -> None:
    """cloud-init's NoCloud seed: the user data EC2 would hand the instance, and its instance id."""
    machine.write("/var/lib/cloud/seed/nocloud/meta-data", f"instance-id: {instance_id}\nlocal-hostname: orthweb\n")
    machine.write("/var/lib/cloud/seed/nocloud/user-data", user_data, mode=0o600)


class Relay:
    """A TCP relay on a loopback port to another one, opened only when the test says: AWS
    unreachable until ``open()``."""

    def __init__(self, port: int, target: int):
        self.port, self.target = port, target
        self.server: socket.socket | None = None

    def open(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self.server is not None
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        if self.server:
            self.server.close()


if __name__ == "__main__":
    print(host_root())
