"""The layout's rules, checked on the source: imports only go down the layers, and each site fact
(every port number) is written once, in config/facts.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from config import ROOT, facts

PYTHON_FOLDERS = ("config", "stacks", "modules", "userdata", "tools", "tests", "bench", "security")
# Each layer and the packages of ours it may import (besides the standard library and third parties).
ALLOWED = {
    "config": {"config"},
    "modules": {"config", "modules"},
    "userdata": {"config", "userdata"},
    "stacks": {"config", "modules", "userdata", "stacks"},
}
OURS = {"config", "modules", "userdata", "stacks", "tools", "tests", "bench", "main", "security"}
PORTS = {name: value for name, value in vars(facts).items() if name.endswith("_PORT")}


def python_files() -> list[Path]:
    files = [ROOT / "main.py"]
    for folder in PYTHON_FOLDERS:
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_only_go_down_the_layers(layer):
    wrong = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) - ALLOWED[layer])
        for path in sorted((ROOT / layer).rglob("*.py"))
        if imported_packages(path) - ALLOWED[layer]
    }
    assert not wrong, f"{layer}/ may import only {sorted(ALLOWED[layer])}: {wrong}"


def test_the_layer_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from stacks.orthweb_stack import OrthwebStack\nimport tools.proc\n")
    assert imported_packages(bad) - ALLOWED["modules"] == {"stacks", "tools"}


def port_literals(path: Path) -> list[str]:
    """Where a port number is written as an int literal or as a number inside a string literal."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Constant):
            continue
        for name, port in PORTS.items():
            if (type(node.value) is int and node.value == port) or (
                isinstance(node.value, str) and re.search(rf"(?<![\d.-]){port}(?![\d.-])", node.value)
            ):
                hits.append(f"{path.name}:{node.lineno} {name}")
    return hits


def test_each_port_is_written_once_in_python():
    assert set(PORTS) >= {"HTTPS_PORT", "DICOM_TLS_PORT", "ORTHANC_HTTP_PORT", "ORTHANC_DICOM_PORT", "POSTGRES_PORT"}
    elsewhere = [
        f"{path.parent.name}/{hit}" for path in python_files() if path.name != "facts.py" for hit in port_literals(path)
    ]
    assert not elsewhere, elsewhere
    assert len(port_literals(ROOT / "config" / "facts.py")) == len(PORTS)


def test_the_port_check_can_fail(tmp_path):
    port = facts.POSTGRES_PORT
    bad = tmp_path / "bad.py"
    bad.write_text(f'PORT = {port}\nURL = "db:{port}/x"\nDATE = "2025-12-15"\nOTHER = {port + 1}\n')
    assert port_literals(bad) == ["bad.py:1 POSTGRES_PORT", "bad.py:2 POSTGRES_PORT"]
