"""Ingest benchmark: instances/s for 200 small instances, 1 and 4 concurrent associations, through
(a) the nginx TLS front door to the configured Orthanc (PostgreSQL index, S3 storage STAND-IN),
(b) plain DICOM straight to the same Orthanc, and (c) Orthanc with its defaults (SQLite index,
local disk, no tuning) as the ceiling on this machine. ``python -m bench.ingest``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import table, write_result
from config.facts import DEFAULT_AE_TITLE
from tools.harness.dicom_sender import make_instances, send
from tools.harness.localsite import LocalSite
from tools.proc import free_ports, stop_process, wait_for_port

COUNT = 200


def measure(host: str, port: int, ca: str | None, senders: int) -> float:
    batches = [make_instances(COUNT // senders) for _ in range(senders)]
    acknowledged = [0] * senders

    def run(i: int) -> None:
        acknowledged[i] = len(send(host, port, DEFAULT_AE_TITLE, ca, batches[i]).acknowledged)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(senders)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    if sum(acknowledged) != COUNT:
        raise RuntimeError(f"only {sum(acknowledged)} of {COUNT} acknowledged")
    return COUNT / elapsed


def default_orthanc(folder: Path) -> tuple[subprocess.Popen, int]:
    """Orthanc as installed: SQLite and local disk, no TCP_NODELAY, no plugins."""
    port, http = free_ports(2)
    config = folder / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "DicomAet": DEFAULT_AE_TITLE,
                "DicomPort": port,
                "HttpPort": http,
                "StorageDirectory": str(folder / "db"),
                "IndexDirectory": str(folder / "db"),
                "Plugins": [],
                "RemoteAccessAllowed": False,
            }
        )
    )
    proc = subprocess.Popen(["Orthanc", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, process=proc)
    return proc, port


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="orthweb-bench-"))
    results: dict[str, dict[int, float]] = {}
    site = LocalSite(work / "site").start()
    try:
        for senders in (1, 4):
            results.setdefault("(a) TLS front door -> Orthanc (PostgreSQL, S3 stand-in)", {})[senders] = measure(
                "127.0.0.1", site.ports["dicom_tls"], str(site.ca_path), senders
            )
            results.setdefault("(b) plain DICOM -> same Orthanc", {})[senders] = measure(
                "127.0.0.1", site.ports["orthanc_dicom"], None, senders
            )
    finally:
        site.stop()
    (work / "default").mkdir()
    proc, port = default_orthanc(work / "default")
    try:
        for senders in (1, 4):
            results.setdefault("(c) Orthanc defaults (SQLite, disk)", {})[senders] = measure(
                "127.0.0.1", port, None, senders
            )
    finally:
        stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)
    rows = [["path", "1 sender (inst/s)", "4 senders (inst/s)", "4 vs 1"]]
    rows += [[name, f"{r[1]:.1f}", f"{r[4]:.1f}", f"{r[4] / r[1]:.2f}x"] for name, r in results.items()]
    print(table(rows))
    a, b = (list(results.values())[i] for i in (0, 1))
    print(f"TLS front door vs direct plain DICOM: {a[1] / b[1]:.2f}x (1 sender), {a[4] / b[4]:.2f}x (4 senders)")
    write_result(
        "ingest",
        {"instances": COUNT, "results": {k: {str(s): round(v, 1) for s, v in r.items()} for k, r in results.items()}},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
