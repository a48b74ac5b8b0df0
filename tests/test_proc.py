"""The process helper's port hand-out: distinct, reserved across processes, never twice."""

from __future__ import annotations

import os
import subprocess
import sys

from config import ROOT
from tools import proc


def test_ports_are_distinct_and_never_handed_out_twice():
    first = proc.free_ports(40)
    second = proc.free_ports(40)
    assert len(set(first)) == 40 and not set(first) & set(second)
    assert all(proc.PORT_RANGE.start <= p < proc.PORT_RANGE.stop for p in first + second)


def test_another_process_does_not_get_a_reserved_port(tmp_path):
    """Another process, even one with another TMPDIR (the test session sets its own for cdktf),
    starting its search at exactly our first port, gets none of ours. (With the registry under
    TMPDIR the two processes kept separate registries: it failed about one run in thirty.)"""
    mine = proc.free_ports(200)
    start = proc.PORT_RANGE.index(mine[0])
    code = (
        f"from tools import proc; proc.random.randrange = lambda n: {start}; "
        "print(' '.join(map(str, proc.free_ports(200))))"
    )
    theirs = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert not set(mine) & {int(p) for p in theirs.stdout.split()}


def test_a_dead_process_reservation_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(proc, "RESERVATIONS", tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "25000").write_text(dead.stdout.strip())
    assert proc._reserve(25000) is True
    assert proc._reserve(25000) is False, "this process already holds it"


def test_processes_reserving_at_once_never_share_a_port(tmp_path):
    """Many processes claiming ports from one small range at the same moment: each port goes to one
    of them. (It once went to two: a reservation file caught between its creation and its owner's
    pid being written read as "owner 0, dead" and was taken over.)"""
    code = (
        "import sys, time; from pathlib import Path; from tools import proc; "
        f"proc.RESERVATIONS = Path({str(tmp_path)!r}); proc.PORT_RANGE = range(21000, 21600); "
        "proc.random.randrange = lambda n: 0; "  # every process starts at the same port
        "start = float(sys.argv[1]); time.sleep(max(0.0, start - time.time())); "
        "print(' '.join(map(str, proc.free_ports(60))), flush=True); sys.stdin.read()"  # held until all are done
    )
    import time

    start = str(time.time() + 1.5)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code, start], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        for _ in range(8)
    ]
    handed = [int(p) for w in workers if w.stdout for p in w.stdout.readline().split()]
    for w in workers:
        w.communicate(timeout=60)
    assert all(w.returncode == 0 for w in workers)
    assert len(handed) == 8 * 60 and len(set(handed)) == len(handed), "a port was handed to two processes"


def test_a_reservation_being_written_is_not_taken_over(tmp_path, monkeypatch):
    """A reservation file that exists but holds no pid yet belongs to a process still writing it."""
    monkeypatch.setattr(proc, "RESERVATIONS", tmp_path)
    (tmp_path / "25001").write_text("")
    assert proc._reserve(25001) is False


def test_prioritized_puts_the_block_and_its_children_first_then_restores():
    before = os.getpriority(os.PRIO_PROCESS, 0)
    child = [sys.executable, "-c", "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"]
    with proc.prioritized(-3) as raised:
        inside = os.getpriority(os.PRIO_PROCESS, 0)
        started = int(subprocess.run(child, capture_output=True, text=True, check=True).stdout)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
    if os.geteuid() == 0:
        assert raised and inside == started == -3
    else:  # only root may raise priority: the block runs as it was
        assert not raised and inside == started == before
