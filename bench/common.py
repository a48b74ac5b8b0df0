"""Shared helpers for the benchmarks: process-tree peak memory, medians, result files."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from config import ROOT

RESULTS = ROOT / "build" / "bench"


def _tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants (KiB), from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        p = int(status.parent.name)
        children.setdefault(int(fields.get("PPid", "0")), []).append(p)
        rss[p] = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[float, int]:
    """Wall seconds and peak process-tree RSS (MiB) of one command."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kib(proc.pid))
        time.sleep(0.05)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
    return time.monotonic() - start, peak // 1024


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds: its own user+system time plus that of its reaped children)."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[int, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
        # state ppid ... utime(11) stime(12) cutime(13) cstime(14), counted from the state field
        found[int(stat.parent.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / tick)
    return found


def tree_cpu_seconds(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each named group of process trees (a process's reaped children
    count in its cutime/cstime, so short-lived workers are not lost; take differences between calls)."""
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    totals: dict[str, float] = {}
    for name, pids in roots.items():
        total, stack = 0.0, list(pids)
        while stack:
            pid = stack.pop()
            total += stats.get(pid, (0, 0.0))[1]
            stack.extend(children.get(pid, []))
        totals[name] = total
    return totals


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / tick, sum(values[:8]) / tick


def spread(values: list[float]) -> str:
    """median (min-max), the form every repeated figure is reported in."""
    return f"{median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def wait_quiet(threshold: float = 0.15, max_wait: float = 20) -> float:
    """Wait (at most ``max_wait`` seconds) until the machine was less than ``threshold`` busy for one
    second: other work on a shared machine would otherwise land in the figures. Returns the last
    busy share seen (the run goes ahead either way; each run also records the CPU used by others)."""
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_cpu()
        time.sleep(1)
        after = machine_cpu()
        busy = (after[0] - before[0]) / max(after[1] - before[1], 1e-9)
        if busy < threshold or time.monotonic() > deadline:
            return busy
