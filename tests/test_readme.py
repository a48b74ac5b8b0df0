"""The README's generated tables and promises match the code."""

from __future__ import annotations

import re

from tools.maint.docs import INPUTS_DOC, README, render


def test_inputs_table_matches_config():
    text = INPUTS_DOC.read_text()
    assert render(text) == text, "docs/inputs.md's table is stale: run python -m tools.maint.docs"


def test_the_readme_stays_short_and_points_at_every_doc():
    """A newcomer reads the README in five minutes: about 250 lines at most, and every document in
    docs/ (and CONTRIBUTING.md) is one link away."""
    text = README.read_text()
    assert len(text.splitlines()) <= 250, len(text.splitlines())
    root = README.parent
    for doc in [*sorted((root / "docs").glob("*.md")), root / "CONTRIBUTING.md"]:
        assert f"]({doc.relative_to(root)})" in text, f"README does not link {doc.relative_to(root)}"


def test_outputs_table_matches_stack(default_stack, synth_profile):
    section = README.read_text().split("## Outputs", 1)[1].split("\n## ", 1)[0]
    documented = dict(re.findall(r"^\| `(\w+)` \| (\w+) \|", section, re.M))
    scaled = set(synth_profile("scaled").data["output"])
    assert {k for k, profile in documented.items() if profile == "both"} == set(default_stack.data["output"])
    assert set(documented) == scaled | set(default_stack.data["output"])


def test_first_two_commands_are_synth_and_test():
    first_block = README.read_text().split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make synth", "make test"]
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^synth:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (README.parent / ".ci" / "run").read_text()


def test_pre_commit_runs_the_same_gate_as_make_check():
    import subprocess

    import yaml

    config = README.parent / ".pre-commit-config.yaml"
    proc = subprocess.run(
        [str(README.parent / ".venv" / "bin" / "pre-commit"), "validate-config", str(config)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    entries = [hook["entry"] for repo in yaml.safe_load(config.read_text())["repos"] for hook in repo["hooks"]]
    makefile = (README.parent / "Makefile").read_text()
    for tool in ("ruff check", "ruff format --check", "mypy ."):
        assert any(tool in entry for entry in entries) and tool in makefile, tool


def test_every_test_the_docs_name_exists():
    """README and docs/ point at tests as evidence (docs/security.md's HIPAA map): each named file
    exists and holds each named test (``::name`` after a path means that file)."""
    root = README.parent
    missing = []
    for doc in [README, root / "CONTRIBUTING.md", *sorted((root / "docs").glob("*.md"))]:
        current = None
        for path, name in re.findall(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`", doc.read_text()):
            if path:
                current = root / path
                if not current.exists():
                    missing.append(f"{doc.name}: {path}")
                    continue
            if name and current is not None and current.exists():
                if not re.search(rf"^def {name}\(", current.read_text(), re.M):
                    missing.append(f"{doc.name}: {current.relative_to(root)}::{name}")
    assert not missing, missing
