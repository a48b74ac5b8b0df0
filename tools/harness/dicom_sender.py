"""Send DICOM instances and record which ones the server acknowledged: pynetdicom in-process (the
tests: per-instance acknowledgements and a hook after each one) or dcmtk's ``storescu`` on files
(the benchmark: a C++ sender that is not the bottleneck)."""

from __future__ import annotations

import io
import os
import ssl
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tools.ops.validate import make_test_instance, secondary_capture


@dataclass
class SendReport:
    acknowledged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    aborted: bool = False


def make_instances(count: int) -> list[tuple[bytes, str]]:
    """``count`` small instances, each its own study (all of one test patient)."""
    return [make_test_instance() for _ in range(count)]


def make_study(count: int, patient_id: str = "ORTHWEB-LOAD") -> list[tuple[bytes, str]]:
    """``count`` small Secondary Capture instances of one study and series of one patient (what a
    modality sends in one go); returns (file bytes, SOPInstanceUID) pairs."""
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    return [
        secondary_capture(study=study, series=series, patient_name="ORTHWEB^LOAD", patient_id=patient_id, number=n)
        for n in range(1, count + 1)
    ]


def send(
    host: str,
    port: int,
    ae_title: str,
    ca: str | None,
    instances: list[tuple[bytes, str]],
    after_each: Callable[[int], None] | None = None,
) -> SendReport:
    """One association, C-STORE each instance in turn; stops when the association drops."""
    from pydicom import dcmread
    from pydicom.uid import SecondaryCaptureImageStorage
    from pynetdicom import AE

    ae = AE(ae_title="ORTHWEBLOAD")
    ae.add_requested_context(SecondaryCaptureImageStorage)
    report = SendReport()
    tls = (ssl.create_default_context(cafile=ca), host) if ca else None
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls)
    if not assoc.is_established:
        report.aborted = True
        report.failed = [uid for _, uid in instances]
        return report
    try:
        for index, (data, uid) in enumerate(instances):
            if not assoc.is_established:
                report.aborted = True
                report.failed.append(uid)
                continue
            status = assoc.send_c_store(dcmread(io.BytesIO(data)))
            (report.acknowledged if status and status.Status == 0 else report.failed).append(uid)
            if after_each:
                after_each(index)
    finally:
        if assoc.is_established:
            assoc.release()
    return report


def write_files(folder: Path, instances: Sequence[tuple[bytes, str]]) -> list[Path]:
    """The instances as files for ``storescu`` (named in sending order)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, (data, _) in enumerate(instances):
        path = folder / f"{number:05d}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


@dataclass
class StorescuRun:
    returncode: int
    cpu_seconds: float  # the sender's own user + system CPU time
    log: Path


def storescu(
    host: str,
    port: int,
    ae_title: str,
    files: Sequence[Path],
    log: Path,
    ca: Path | None = None,
    timeout: float = 900,
    nodelay: bool = True,
) -> StorescuRun:
    """dcmtk ``storescu``: one association, every file in turn; TLS without a client certificate
    (``+tla``) trusting ``ca`` when given, plain DICOM otherwise. ``TCP_NODELAY=1`` in its
    environment: without it dcmtk leaves Nagle's algorithm on and each small PDU can wait for the
    peer's delayed ACK (tens of ms per instance). Exit code 0 means every store was acknowledged
    (storescu stops at the first refused one). ``nodelay=False`` leaves Nagle on (the benchmark's
    reference row: what a sender without the setting gets)."""
    tls = ["+tla", "+cf", str(ca)] if ca else []
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["storescu", *tls, "-aec", ae_title, host, str(port), *map(str, files)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            # wait4, not wait: the child's own CPU time comes with its exit status.
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return StorescuRun(proc.returncode, usage.ru_utime + usage.ru_stime, log)
