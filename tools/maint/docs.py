"""Tables for the docs generated from the code, so they cannot drift (a test compares them).

``python -m tools.maint.docs`` rewrites the marked blocks in docs/inputs.md. The inputs table comes
from each setting's metadata in config/inputs.py (type, default, description), never from the
source text.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable

from config import ROOT
from config.inputs import ENV_PREFIX, OrthwebConfig

README = ROOT / "README.md"
INPUTS_DOC = ROOT / "docs" / "inputs.md"


def _show(value: object) -> str:
    if value in ("", (), None):
        return "(empty)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return str(value)


def inputs_table() -> str:
    rows = ["| field | environment variable | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(OrthwebConfig):
        rows.append(
            f"| `{f.name}` | `{ENV_PREFIX}{f.name.upper()}` | `{_show(f.default)}` | {f.metadata['description']} |"
        )
    return "\n".join(rows)


BLOCKS: dict[str, Callable[[], str]] = {"inputs": inputs_table}


def render(readme: str) -> str:
    for name, make in BLOCKS.items():
        begin, end = f"<!-- BEGIN {name} (generated: python -m tools.maint.docs) -->", f"<!-- END {name} -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        found = pattern.search(readme)
        if not found:
            raise SystemExit(f"{INPUTS_DOC.name} lacks the {name} block markers")
        readme = readme[: found.start()] + f"{begin}\n{make()}\n{end}" + readme[found.end() :]
    return readme


if __name__ == "__main__":
    INPUTS_DOC.write_text(render(INPUTS_DOC.read_text()))
    sys.exit(0)
