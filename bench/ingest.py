"""Ingest benchmark: instances/s of small instances sent with dcmtk's ``storescu`` (a C++ sender
with ``TCP_NODELAY=1``, one association per sender, files generated before any clock starts), on
the local site harness, with the CPU time each part of the path used.

1. Front door cost, on the fast-storage path (Orthanc with its PostgreSQL index and local-disk
   storage, no S3 stand-in, so Orthanc runs near its own rate): (i) through the nginx TLS front door
   vs (ii) plain DICOM straight to the same Orthanc, 1 and 4 senders. Plus, once each, senders that
   leave Nagle's algorithm on: the previous benchmark's pynetdicom and storescu without TCP_NODELAY.
2. Scaled profile: through the TCP load balancer (HAProxy standing where the NLB stands) to one
   server vs two (two hosts on one index; "one server" is the same site with host-1 taken out of
   the balancer's rotation), 4 and 8 senders, same fast-storage path.
3. The configured site's storage path (the S3 plugin STAND-IN writing to the emulator) through the
   front door, for reference: what bounds the local site as ``make local-up`` runs it.

Each front door configuration runs ``--front-runs`` times (default 5; 800 instances a run: 1 x 800 or
4 x 200), each other one ``--runs`` times (default 3; 200 instances per sender), interleaved so drift
on the machine hits all alike; figures are medians with the spread (min-max). Before each run the
script waits for the machine to be quiet, and records the CPU other processes used during it.
``python -m bench.ingest [--runs N] [--front-runs N] [--part front|scaled|s3]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bench.common import machine_cpu, median, spread, table, tree_cpu_seconds, wait_quiet, write_result
from config.facts import ORTHANC_ADMIN_USER
from tools.harness.dicom_sender import StorescuRun, make_instances, make_study, send, storescu, write_files
from tools.harness.localsite import LocalSite

PER_SENDER = 200
FRONT_PER_RUN = 800  # instances per front door run: 1 sender x 800 or 4 x 200
REFERENCE_COUNT = 100  # instances for each Nagle-bound reference sender (about 20/s: 5 s each)
FRONT, DIRECT = "(i) TLS front door (nginx) -> Orthanc", "(ii) plain DICOM straight to the same Orthanc"
SHORT = {FRONT: "front", DIRECT: "direct"}
SENDERS_CPU = "senders (storescu)"
FOREIGN_LIMIT = 0.2  # other processes' share of the machine above which a run is done again


@dataclass
class Run:
    instances: int
    seconds: float
    cpu: dict[str, float]  # CPU seconds by part of the path during the run
    busy: float  # share of the machine's CPU time (all cores) that was busy during the run
    associations: list[int]  # per host, for the balancer runs
    # Index transactions PostgreSQL refused as not serializable (Orthanc retries each after 100 ms or more).
    conflicts: int
    # CPU the machine spent outside the measured processes (other work on a shared machine, this
    # script), as a share of all cores during the run.
    foreign: float
    # Set when this run replaces one that met other load: that run's foreign share.
    repeated_after: float | None = None

    @property
    def rate(self) -> float:
        return self.instances / self.seconds


Batches = list[list[Path]]


def generate(folder: Path, senders: int, per_sender: int) -> Batches:
    """One study of ``per_sender`` instances per sender, each sender its own patient (modalities
    send different patients), fresh UIDs so nothing is already stored."""
    return [
        write_files(folder / f"sender-{i}", make_study(per_sender, patient_id=f"BENCH-{folder.name}-{i}"))
        for i in range(senders)
    ]


def parts(site: LocalSite) -> dict[str, list[int]]:
    """The processes whose CPU time is counted, by part of the path (each with its children)."""
    groups: dict[str, list[int]] = {"Orthanc": [], "nginx": [], "HAProxy": []}
    for name, proc in site.processes.items():
        groups[{"orthanc": "Orthanc", "nginx": "nginx", "haproxy": "HAProxy"}[name.split("-")[0]]].append(proc.pid)
    groups["PostgreSQL"] = [site.pg.process.pid] if site.pg.process else []
    groups["emulator"] = [site.emulator.process.pid] if site.emulator.process else []
    return {name: pids for name, pids in groups.items() if pids}


def instance_count(site: LocalSite) -> int:
    status, body = site.rest("/statistics", auth=(ORTHANC_ADMIN_USER, site.admin()["password"]), direct=True)
    if status != 200:
        raise RuntimeError(f"REST /statistics answered {status}")
    return int(json.loads(body)["CountInstances"])


def serialization_failures(site: LocalSite) -> int:
    """Transactions PostgreSQL has refused so far with "could not serialize access" (from its log:
    the harness logs errors, never statements)."""
    log = site.pg.root / "postgres.log"
    return log.read_text(errors="replace").count("could not serialize access") if log.exists() else 0


def balancer_associations(site: LocalSite) -> list[int]:
    if site.hosts == 1:
        return []
    servers = site.balancer_servers()
    return [int(servers[("dicom_tls", h.name)]["stot"]) for h in site.local_hosts]


def measure(site: LocalSite, port: int, ca: Path | None, batches: Batches) -> Run:
    """``measure_once``; a run during which other processes took more than FOREIGN_LIMIT of the
    machine is done again once, with fresh instances (a shared machine: the result says so)."""
    run = measure_once(site, port, ca, batches)
    if run.foreign <= FOREIGN_LIMIT:
        return run
    folder = batches[0][0].parent.parent
    again = generate(folder.with_name(folder.name + "-again"), len(batches), len(batches[0]))
    return replace(measure_once(site, port, ca, again), repeated_after=round(run.foreign, 2))


def measure_once(site: LocalSite, port: int, ca: Path | None, batches: Batches) -> Run:
    """All senders at once, one association each; fails unless every instance is acknowledged and
    Orthanc's index grew by exactly that many."""
    total = sum(len(files) for files in batches)
    expected = instance_count(site) + total
    roots = parts(site)
    results: list[StorescuRun | None] = [None] * len(batches)

    def run(i: int) -> None:
        results[i] = storescu("127.0.0.1", port, site.ae_title, batches[i], batches[i][0].parent / "storescu.log", ca)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(batches))]
    wait_quiet()
    conflicts, links = serialization_failures(site), balancer_associations(site)
    cpu, machine = tree_cpu_seconds(roots), machine_cpu()
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - start
    cpu_after, machine_after, links_after = tree_cpu_seconds(roots), machine_cpu(), balancer_associations(site)
    for result in results:
        if result is None or result.returncode != 0:
            log = result.log.read_text()[-1500:] if result else "(did not run)"
            raise RuntimeError(f"storescu failed:\n{log}")
    stored = instance_count(site)
    if stored != expected:
        raise RuntimeError(f"Orthanc holds {stored} instances, expected {expected}")
    used = {name: cpu_after[name] - cpu[name] for name in roots}
    used[SENDERS_CPU] = sum(r.cpu_seconds for r in results if r)
    elapsed_cpu = max(machine_after[1] - machine[1], 1e-9)
    busy = (machine_after[0] - machine[0]) / elapsed_cpu
    foreign = max(0.0, (machine_after[0] - machine[0] - sum(used.values())) / elapsed_cpu)
    spread_over = [b - a for a, b in zip(links, links_after, strict=True)]
    return Run(total, seconds, used, busy, spread_over, serialization_failures(site) - conflicts, foreign)


def reference_rates(site: LocalSite, work: Path, count: int) -> dict[str, float]:
    """One association through the front door with senders that leave Nagle's algorithm on: the
    previous benchmark's pynetdicom (in this Python process) and storescu without TCP_NODELAY."""
    rates: dict[str, float] = {}
    instances = make_instances(count)
    start = time.monotonic()
    report = send("127.0.0.1", site.ports["dicom_tls"], site.ae_title, str(site.ca_path), instances)
    rates["pynetdicom (the previous benchmark's sender)"] = count / (time.monotonic() - start)
    if len(report.acknowledged) != count:
        raise RuntimeError(f"pynetdicom: only {len(report.acknowledged)} of {count} acknowledged")
    files = write_files(work / "nagle", make_study(count, patient_id="BENCH-NAGLE"))
    start = time.monotonic()
    run = storescu(
        "127.0.0.1", site.ports["dicom_tls"], site.ae_title, files, work / "nagle.log", site.ca_path, nodelay=False
    )
    rates["storescu without TCP_NODELAY=1"] = count / (time.monotonic() - start)
    if run.returncode != 0:
        raise RuntimeError(f"storescu without TCP_NODELAY failed:\n{run.log.read_text()[-1500:]}")
    return rates


def cpu_per_instance(runs: Sequence[Run]) -> dict[str, float]:
    """Median CPU milliseconds per instance, by part of the path."""
    names = runs[0].cpu
    return {name: median([r.cpu[name] * 1000 / r.instances for r in runs]) for name in names}


Results = dict[tuple[str, int], list[Run]]


def front_door(work: Path, runs: int, per_run: int) -> tuple[Results, dict[str, float]]:
    senders_counts = (1, 4)
    # The same instances per run for 1 and 4 senders: a 1-sender run of 200 would last under a
    # second, too short to tell a 10 % difference from noise.
    batches = {
        (path, senders, run): generate(work / f"{SHORT[path]}-{senders}-{run}", senders, per_run // senders)
        for run in range(runs)
        for senders in senders_counts
        for path in (FRONT, DIRECT)
    }
    results: Results = {}
    site = LocalSite(work / "fast-site", storage="disk").start()
    try:
        targets = {FRONT: (site.ports["dicom_tls"], site.ca_path), DIRECT: (site.ports["orthanc_dicom"], None)}
        for run in range(runs):
            for senders in senders_counts:
                # Alternate which path goes first, so neither always meets the warmer database.
                order = (FRONT, DIRECT) if run % 2 == 0 else (DIRECT, FRONT)
                for path in order:
                    port, ca = targets[path]
                    results.setdefault((path, senders), []).append(
                        measure(site, port, ca, batches[(path, senders, run)])
                    )
        references = reference_rates(site, work, REFERENCE_COUNT)
    finally:
        site.stop()
    return results, references


def scaled(work: Path, runs: int, per_sender: int) -> Results:
    senders_counts = (4, 8)
    batches = {
        (servers, senders, run): generate(work / f"scaled-{servers}-{senders}-{run}", senders, per_sender)
        for run in range(runs)
        for senders in senders_counts
        for servers in (1, 2)
    }
    results: Results = {}
    site = LocalSite(work / "scaled-site", hosts=2, storage="disk").start()
    try:
        for run in range(runs):
            for senders in senders_counts:
                for servers in (1, 2) if run % 2 == 0 else (2, 1):
                    site.set_in_balancer(1, servers == 2)
                    site.wait_host_state(1, "UP" if servers == 2 else "MAINT")
                    results.setdefault((f"{servers} server{'s' * (servers > 1)}", senders), []).append(
                        measure(site, site.ports["dicom_tls"], site.ca_path, batches[(servers, senders, run)])
                    )
    finally:
        site.stop()
    return results


def stand_in(work: Path, runs: int, per_sender: int) -> Results:
    senders_counts = (1, 4)
    batches = {
        (senders, run): generate(work / f"s3-{senders}-{run}", senders, per_sender)
        for run in range(runs)
        for senders in senders_counts
    }
    results: Results = {}
    site = LocalSite(work / "s3-site").start()
    try:
        for run in range(runs):
            for senders in senders_counts:
                results.setdefault(("(iii) TLS front door -> Orthanc, S3 stand-in", senders), []).append(
                    measure(site, site.ports["dicom_tls"], site.ca_path, batches[(senders, run)])
                )
    finally:
        site.stop()
    return results


def rates_table(results: Results, counts: Sequence[int], first: str) -> str:
    labels = list(dict.fromkeys(label for label, _ in results))
    rows = [[first, *(f"{n} sender{'s' * (n > 1)}: inst/s median (min-max)" for n in counts)]]
    rows += [[label, *(spread([r.rate for r in results[(label, n)]]) for n in counts)] for label in labels]
    return table(rows)


def conflicts_table(results: Results, counts: Sequence[int], first: str) -> str:
    labels = list(dict.fromkeys(label for label, _ in results))
    rows = [[first, *(f"{n} sender{'s' * (n > 1)}: retried per 1000 instances" for n in counts)]]
    rows += [
        [label, *(spread([r.conflicts * 1000 / r.instances for r in results[(label, n)]]) for n in counts)]
        for label in labels
    ]
    return table(rows)


def ratio(results: Results, top: str, bottom: str, senders: int) -> tuple[float, float, float, float]:
    """Runs are paired (the two configurations run back to back, in alternating order): the median
    of the per-run ratios with their min-max, and the ratio of the medians (which divides figures
    from different runs, so it carries the drift between runs)."""
    a, b = results[(top, senders)], results[(bottom, senders)]
    paired = [x.rate / y.rate for x, y in zip(a, b, strict=True)]
    of_medians = median([r.rate for r in a]) / median([r.rate for r in b])
    return median(paired), min(paired), max(paired), of_medians


def ratio_line(label: str, results: Results, top: str, bottom: str, senders: int, goal: float) -> str:
    paired, low, high, of_medians = ratio(results, top, bottom, senders)
    return (
        f"{label}, {senders} sender{'s' * (senders > 1)}: {paired:.2f}x median of per-run ratios "
        f"({low:.2f}-{high:.2f}); ratio of medians {of_medians:.2f}x; goal >= {goal}x"
    )


def repeats(results: Results) -> str:
    again = [r.repeated_after for runs in results.values() for r in runs if r.repeated_after is not None]
    if not again:
        return "no run met other load above the limit"
    return f"{len(again)} run(s) done again after other processes took {', '.join(f'{a:.0%}' for a in again)}"


def cpu_table(results: Results, keys: Sequence[tuple[str, int]]) -> str:
    names = list(dict.fromkeys(name for key in keys for name in results[key][0].cpu))
    per = {key: cpu_per_instance(results[key]) for key in keys}
    rows = [["CPU ms per instance (median)", *(f"{label}, {n} senders" for label, n in keys)]]
    rows += [[name, *(f"{per[key].get(name, 0.0):.2f}" for key in keys)] for name in names]
    rows.append(["sum of the parts", *(f"{sum(per[key].values()):.2f}" for key in keys)])
    rows.append(["machine busy (2 cores = 100 %)", *(f"{median([r.busy for r in results[k]]):.0%}" for k in keys)])
    rows.append(["  of which other processes", *(f"{median([r.foreign for r in results[k]]):.0%}" for k in keys)])
    return table(rows)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3, help="runs of each scaled and stand-in configuration")
    parser.add_argument("--front-runs", type=int, default=5, help="runs of each front door configuration")
    parser.add_argument("--per-sender", type=int, default=PER_SENDER)
    parser.add_argument("--part", choices=("all", "front", "scaled", "s3"), default="all")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orthweb-bench-"))
    out: dict[str, object] = {
        "per_sender": args.per_sender,
        "runs": args.runs,
        "front_runs": args.front_runs,
        "front_per_run": FRONT_PER_RUN,
    }
    try:
        if args.part in ("all", "front"):
            front, references = front_door(work, args.front_runs, FRONT_PER_RUN)
            print(rates_table(front, (1, 4), "fast-storage path (PostgreSQL index, local disk), storescu"))
            print(conflicts_table(front, (1, 4), "index transactions refused as not serializable"))
            for n in (1, 4):
                print(ratio_line("TLS front door vs direct", front, FRONT, DIRECT, n, 0.9))
            print(repeats(front))
            for name, rate in references.items():
                print(f"1 association through the front door, {name}: {rate:.1f} inst/s")
            print(cpu_table(front, [(FRONT, 4), (DIRECT, 4)]))
            out["front_door"] = {f"{k[0]} | {k[1]}": [asdict(r) for r in v] for k, v in front.items()}
            out["nagle_references"] = {name: round(rate, 1) for name, rate in references.items()}
        if args.part in ("all", "scaled"):
            scaled_results = scaled(work, args.runs, args.per_sender)
            print(rates_table(scaled_results, (4, 8), "through the balancer (HAProxy), storescu over TLS"))
            print(conflicts_table(scaled_results, (4, 8), "index transactions refused as not serializable"))
            for n in (4, 8):
                print(ratio_line("2 servers vs 1", scaled_results, "2 servers", "1 server", n, 1.5))
            print(repeats(scaled_results))
            print(cpu_table(scaled_results, [("1 server", 8), ("2 servers", 8)]))
            out["scaled"] = {f"{k[0]} | {k[1]}": [asdict(r) for r in v] for k, v in scaled_results.items()}
        if args.part in ("all", "s3"):
            s3 = stand_in(work, args.runs, args.per_sender)
            print(rates_table(s3, (1, 4), "the configured site's storage (S3 stand-in), storescu"))
            print(conflicts_table(s3, (1, 4), "index transactions refused as not serializable"))
            print(repeats(s3))
            print(cpu_table(s3, [(next(iter(s3))[0], 4)]))
            out["s3_stand_in"] = {f"{k[0]} | {k[1]}": [asdict(r) for r in v] for k, v in s3.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_result("ingest", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
