"""Tables for the README generated from the code, so they cannot drift (a test compares them).

``python -m tools.docs`` rewrites the marked blocks in README.md.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

from stacks.config import ENV_PREFIX, OrthwebConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIG_SOURCE = ROOT / "stacks" / "config.py"
README = ROOT / "README.md"
FIELD_LINE = re.compile(r"^    (\w+): [^=]+ = .*?  # (.+)$")


def field_comments() -> dict[str, str]:
    comments = {}
    for line in CONFIG_SOURCE.read_text().splitlines():
        match = FIELD_LINE.match(line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


def _show(value: object) -> str:
    if value in ("", (), None):
        return "(empty)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return str(value)


def inputs_table() -> str:
    comments = field_comments()
    rows = ["| field | environment variable | default | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(OrthwebConfig):
        default = field.default if field.default is not dataclasses.MISSING else None
        rows.append(
            f"| `{field.name}` | `{ENV_PREFIX}{field.name.upper()}` | `{_show(default)}` | {comments[field.name]} |"
        )
    return "\n".join(rows)


BLOCKS = {"inputs": inputs_table}


def render(readme: str) -> str:
    for name, make in BLOCKS.items():
        begin, end = f"<!-- BEGIN {name} (generated: python -m tools.docs) -->", f"<!-- END {name} -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md lacks the {name} block markers")
        block = f"{begin}\n{make()}\n{end}"
        start, stop = pattern.search(readme).span()  # type: ignore[union-attr]
        readme = readme[:start] + block + readme[stop:]
    return readme


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
    sys.exit(0)
