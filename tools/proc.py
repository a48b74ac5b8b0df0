"""The one process helper: free loopback ports that cannot collide, waiting for a listener, stopping.

``free_ports`` hands out ports below the kernel's ephemeral range (so no outgoing connection can
take one before its server binds it), reserves each with a lock file shared by every process on
the machine (parallel test workers, a ``make local-up`` beside a test run), never hands a port out
twice, and checks it can be bound. A reservation lasts while the process that made it runs. A
server can still fail to bind; whoever starts one checks that *its* server answers.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

# Below Linux's default ephemeral range (32768-60999) and above the well-known/registered crowd.
PORT_RANGE = range(20000, 32768)
# Ports are machine-wide, so is their registry: a fixed folder, not one under TMPDIR (a process with
# another TMPDIR, such as the test session's, would keep a registry of its own).
RESERVATIONS = Path("/tmp/orthweb-ports")  # noqa: S108 - a registry of port numbers, no data
_mine: list[Path] = []


@atexit.register
def _release() -> None:
    for path in _mine:
        path.unlink(missing_ok=True)


# A reservation file without a pid younger than this is being written; older, its writer died.
UNWRITTEN_GRACE_SECONDS = 30


@contextlib.contextmanager
def _reservations_locked() -> Iterator[None]:
    """Every process's reservations, one at a time (an exclusive lock on RESERVATIONS/.lock)."""
    if not RESERVATIONS.is_dir():
        RESERVATIONS.mkdir(exist_ok=True)
        with contextlib.suppress(PermissionError):
            RESERVATIONS.chmod(0o1777)  # every user's processes share the machine's ports  # noqa: S103
    with open(RESERVATIONS / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _held(path: Path) -> bool:
    """Whether the reservation ``path`` belongs to this or another live process."""
    try:
        text = path.read_text().strip()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if not text.isdigit():
        return age < UNWRITTEN_GRACE_SECONDS
    owner = int(text)
    return owner == os.getpid() or alive(owner)


def _reserve(port: int) -> bool:
    """Claim ``port`` for this process unless a live process holds it. The file appears with the
    pid already in it (written aside, then hard-linked), under the lock every process takes."""
    path = RESERVATIONS / str(port)
    with _reservations_locked():
        if path.exists():
            if _held(path):
                return False
            path.unlink(missing_ok=True)  # its process is gone: take it over
        draft = RESERVATIONS / f".{port}.{os.getpid()}"
        draft.write_text(str(os.getpid()))
        try:
            os.link(draft, path)
        except FileExistsError:
            return False
        finally:
            draft.unlink(missing_ok=True)
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


@contextlib.contextmanager
def prioritized(niceness: int = -5) -> Iterator[bool]:
    """This process, and the programs it starts meanwhile, ahead of the machine's other work for
    the block (a more favourable niceness). For a job on the critical path that needs little CPU but
    waits on every slice it does not get (the rehearsal's Terraform beside CPU-bound test workers).
    Only root may raise priority: elsewhere the block runs unchanged (yields False)."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except PermissionError:
        yield False
        return
    try:
        yield True
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, before)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()
    except OSError:
        return False
