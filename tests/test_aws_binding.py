"""The lazy AWS binding: byte-identical output to the stock import, and a fallback when the
binding's layout is not the expected one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import modules.aws_binding as binding
from config import ROOT


def synth(out: Path, *program: str) -> bytes:
    subprocess.run(
        [sys.executable, *(program or (str(ROOT / "main.py"),))],
        check=True,
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "CDKTF_OUTDIR": str(out)},
        timeout=300,
    )
    return (out / "stacks" / "orthweb" / "cdk.tf.json").read_bytes()


@pytest.mark.slow
def test_lazy_and_stock_binding_synthesize_identical_json(tmp_path):
    assert synth(tmp_path / "lazy") == synth(tmp_path / "stock", "-m", "tools.harness.stock_synth")


def test_test_process_uses_the_lazy_binding():
    assert getattr(sys.modules[binding.PACKAGE], "__orthweb_lazy__", False) is True


def test_unknown_layout_falls_back_to_the_stock_import(monkeypatch, tmp_path):
    (tmp_path / "_jsii").mkdir()  # no assembly of the expected version
    monkeypatch.delitem(sys.modules, binding.PACKAGE)
    monkeypatch.setattr(binding, "_package_dir", lambda: tmp_path)
    assert binding.use_lazy_binding() is False
    assert binding.PACKAGE not in sys.modules
