"""The layout's rules, checked on the source: imports only go down the layers, and each site fact
(every port number) is written once, in config/facts.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from config import ROOT, facts

PYTHON_FOLDERS = ("config", "stacks", "modules", "userdata", "tools", "tests", "bench", "security")
PRODUCT = {"config", "modules", "userdata", "stacks", "main"}
# Each package, by audience, and the packages of ours it may import (besides the standard library and
# third parties). Imports go one way: the product; the operator commands users run against a site
# (tools/ops, their own Pipfile category); the test harness (tools/harness, with its process and
# profile helpers); then what only developers run: CI checks, maintenance, benchmarks and the tests.
ALLOWED = {
    "config": {"config"},
    "modules": {"config", "modules"},
    "userdata": {"config", "userdata"},
    "stacks": {"config", "modules", "userdata", "stacks"},
    "main": {"config", "stacks", "main"},
    "tools.ops": PRODUCT | {"tools.ops"},
    "tools.proc": {"tools.proc"},
    "tools.profiles": {"config", "tools.profiles"},
    "tools.harness": PRODUCT | {"tools.ops", "tools.proc", "tools.profiles", "tools.harness"},
    "tools.maint": PRODUCT | {"tools.ops", "tools.profiles", "tools.maint"},
    "tools.ci": PRODUCT | {"tools.ops", "tools.harness", "tools.profiles", "tools.maint", "tools.ci"},
    "bench": PRODUCT | {"tools.ops", "tools.harness", "tools.proc", "tools.profiles", "bench"},
    # The tests use everything but the benchmarks, and no test module imports another.
    "tests": PRODUCT
    | {"tools", "tools.ops", "tools.harness", "tools.proc", "tools.profiles", "tools.maint", "tools.ci"}
    | {"tests"},
    "security": {"security"},
}
OURS = {"config", "modules", "userdata", "stacks", "tools", "tests", "bench", "main", "security"}
PORTS = {name: value for name, value in vars(facts).items() if name.endswith("_PORT")}


def python_files() -> list[Path]:
    files = [ROOT / "main.py"]
    for folder in PYTHON_FOLDERS:
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def package_of(path: Path) -> str:
    """The package a file belongs to: its top folder, or tools.<folder> (tools.proc, tools.profiles)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] == "tools" and len(parts) > 1 and parts[1] != "__init__":
        return f"tools.{parts[1]}"
    return parts[0]


def module_package(name: str) -> str:
    """The package an imported module belongs to (``tests.test_*`` for a test module)."""
    parts = name.split(".")
    if parts[0] == "tools" and len(parts) > 1:
        return f"tools.{parts[1]}"
    if parts[0] == "tests" and len(parts) > 1 and parts[1].startswith("test_"):
        return "tests.test_*"
    return parts[0]


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # "from tools import ops" names the package tools.ops.
            names = [
                f"{node.module}.{alias.name}" if node.module in ("tools", "tests") else node.module
                for alias in node.names
            ]
        found |= {module_package(n) for n in names if n.split(".")[0] in OURS}
    return found


def test_every_python_file_belongs_to_a_layer():
    assert {package_of(path) for path in python_files()} <= set(ALLOWED) | {"tools"}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_only_go_down_the_layers(layer):
    wrong = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) - ALLOWED[layer])
        for path in python_files()
        if package_of(path) == layer and imported_packages(path) - ALLOWED[layer]
    }
    assert not wrong, f"{layer} may import only {sorted(ALLOWED[layer])}: {wrong}"


def test_the_layer_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from stacks.orthweb_stack import OrthwebStack\nimport tools.proc\n")
    assert imported_packages(bad) - ALLOWED["modules"] == {"stacks", "tools.proc"}
    # An operator command reaching up into the test harness, and a test module importing another.
    planted = tmp_path / "planted.py"
    planted.write_text(
        "from tools.harness.localsite import LocalSite\nfrom tools import maint\nimport tests.test_e2e\n"
    )
    assert imported_packages(planted) - ALLOWED["tools.ops"] == {"tools.harness", "tools.maint", "tests.test_*"}
    assert imported_packages(planted) - ALLOWED["tests"] == {"tests.test_*"}


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
