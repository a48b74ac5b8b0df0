"""What differs between Debian 12 and Debian 13 (docs/debian13.md) and the code that absorbs it:
the PostgreSQL server's folder, the transfer syntax Orthanc stores an instance in, and Python's
sum() of floats."""

from __future__ import annotations

import io
import math

import pytest
from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian

from tools.harness.localpg import find_pg_bin
from tools.ops.cost import Item, Line
from tools.ops.validate import dataset_digest, make_test_instance


@pytest.mark.parametrize(("majors", "expected"), [((15,), "15"), ((17,), "17"), ((15, 17), "17"), ((), "15")])
def test_the_postgresql_server_is_the_newest_installed(tmp_path, monkeypatch, majors, expected):
    monkeypatch.delenv("ORTHWEB_PG_BIN", raising=False)
    for major in majors:
        (tmp_path / str(major) / "bin").mkdir(parents=True)
        (tmp_path / str(major) / "bin" / "postgres").touch()
    (tmp_path / "18" / "bin").mkdir(parents=True)  # a client-only folder: no server in it
    assert find_pg_bin(tmp_path) == tmp_path / expected / "bin"
    monkeypatch.setenv("ORTHWEB_PG_BIN", "/opt/pg/bin")
    assert str(find_pg_bin(tmp_path)) == "/opt/pg/bin"


def test_the_digest_is_the_same_whichever_transfer_syntax_the_receiver_stored():
    """Orthanc 1.12 (Debian 13) stores the validator's instance as implicit VR, where Pixel Data
    reads back as OW; the values are the same, so the digest is."""
    sent, _ = make_test_instance()
    ds = dcmread(io.BytesIO(sent))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    stored = io.BytesIO()
    ds.save_as(stored, enforce_file_format=True)
    assert dcmread(io.BytesIO(stored.getvalue()))["PixelData"].VR != dcmread(io.BytesIO(sent))["PixelData"].VR
    assert dataset_digest(stored.getvalue()) == dataset_digest(sent)
    ds.PatientID = "SOMEONE-ELSE"
    changed = io.BytesIO()
    ds.save_as(changed, enforce_file_format=True)
    assert dataset_digest(changed.getvalue()) != dataset_digest(sent)


def test_a_cost_line_sums_to_the_same_cents_on_every_python():
    """Python 3.12 made sum() of floats compensated; fsum is exact on 3.11 (Debian 12) and 3.13 (Debian 13)."""
    line = Line("x.y", "us-east-1", tuple(Item(str(i), usd) for i, usd in enumerate([0.1] * 10 + [1e16, -1e16])))
    assert line.monthly == math.fsum([0.1] * 10)
