"""Send generated DICOM instances over TLS (pynetdicom) and record which ones the server acknowledged."""

from __future__ import annotations

import io
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from tools.ops.validate import make_test_instance


@dataclass
class SendReport:
    acknowledged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    aborted: bool = False


def make_instances(count: int) -> list[tuple[bytes, str]]:
    return [make_test_instance() for _ in range(count)]


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
