"""The process helper's port hand-out: distinct, reserved across processes, never twice."""

from __future__ import annotations

import subprocess
import sys

from config import ROOT
from tools import proc


def test_ports_are_distinct_and_never_handed_out_twice():
    first = proc.free_ports(40)
    second = proc.free_ports(40)
    assert len(set(first)) == 40 and not set(first) & set(second)
    assert all(proc.PORT_RANGE.start <= p < proc.PORT_RANGE.stop for p in first + second)


def test_another_process_does_not_get_a_reserved_port():
    mine = set(proc.free_ports(200))
    code = "from tools import proc; print(' '.join(map(str, proc.free_ports(200))))"
    theirs = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert not mine & {int(p) for p in theirs.stdout.split()}


def test_a_dead_process_reservation_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(proc, "RESERVATIONS", tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "25000").write_text(dead.stdout.strip())
    assert proc._reserve(25000) is True
    assert proc._reserve(25000) is False, "this process already holds it"
