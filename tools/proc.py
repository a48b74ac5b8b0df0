"""The one process helper: free loopback ports that cannot collide, waiting for a listener, stopping.

``free_ports`` hands out ports below the kernel's ephemeral range (so no outgoing connection can
take one before its server binds it), reserves each with a lock file shared by every process on
the machine (parallel test workers, a ``make local-up`` beside a test run), never hands a port out
twice, and checks it can be bound. A reservation lasts while the process that made it runs. A
server can still fail to bind; whoever starts one checks that *its* server answers.
"""

from __future__ import annotations

import atexit
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# Below Linux's default ephemeral range (32768-60999) and above the well-known/registered crowd.
PORT_RANGE = range(20000, 32768)
RESERVATIONS = Path(tempfile.gettempdir()) / "orthweb-ports"
_mine: list[Path] = []


@atexit.register
def _release() -> None:
    for path in _mine:
        path.unlink(missing_ok=True)


def _reserve(port: int) -> bool:
    """Claim ``port`` for this process unless a live process holds it."""
    RESERVATIONS.mkdir(exist_ok=True)
    path = RESERVATIONS / str(port)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            owner = int(path.read_text() or "0")
        except (OSError, ValueError):
            return False
        if owner == os.getpid() or alive(owner):
            return False
        path.unlink(missing_ok=True)  # its process is gone: take it over
        return _reserve(port)
    with os.fdopen(fd, "w") as out:
        out.write(str(os.getpid()))
    _mine.append(path)
    return True


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1, reserved for this process."""
    ports: list[int] = []
    start = random.randrange(len(PORT_RANGE))  # noqa: S311 - spreading, not security
    for offset in range(len(PORT_RANGE)):
        port = PORT_RANGE[(start + offset) % len(PORT_RANGE)]
        if _bindable(port) and _reserve(port):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"no {count} free ports in {PORT_RANGE.start}-{PORT_RANGE.stop - 1}")


def free_port() -> int:
    return free_ports(1)[0]


def wait_for_port(
    port: int, timeout: float = 60, process: subprocess.Popen | None = None, host: str = "127.0.0.1"
) -> None:
    """Until something accepts TCP connections on ``port`` (fails early if ``process`` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


def stop_process(process: subprocess.Popen | None, timeout: float = 30, sig: int = signal.SIGTERM) -> None:
    """Signal a child process and reap it; SIGKILL if it has not gone after ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """The same for a process that is not our child (``make local-down`` stops what ``local-up`` left)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()
    except OSError:
        return False
