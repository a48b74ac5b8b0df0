"""The DICOM command lines the README and docs/access.md show, taken from them so the tests run
exactly what a user copies (placeholders filled in for the local site)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from config.facts import DICOM_TLS_PORT
from tools.maint.docs import README

ACCESS_DOC = README.parent / "docs" / "access.md"

PROGRAMS = ("echoscu", "storescu")


def readme_lines(program: str) -> list[str]:
    """Every inline code span of the README that runs the dcmtk ``program`` (optionally after
    ``TCP_NODELAY=1``), in order, without duplicates."""
    spans = re.findall(r"`([^`\n]+)`", README.read_text() + "\n" + ACCESS_DOC.read_text())
    pattern = re.compile(rf"^(TCP_NODELAY=1 )?{program} \+")
    found: list[str] = []
    for span in spans:
        if pattern.match(span) and span not in found:
            found.append(span)
    return found


def fill(
    line: str, *, ca: str, host: str, port: int, files: Sequence[str] = (), certs: str = ""
) -> tuple[list[str], dict[str, str]]:
    """``line`` with the README's placeholders replaced: argv and the environment it sets."""
    words = shlex.split(line.replace("<dicom_endpoint host>", "<host>"))
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    argv: list[str] = []
    for word in words:
        if word == "orthweb-ca.pem":
            argv.append(ca)
        elif word == "<host>":
            argv.append(host)
        elif word == str(DICOM_TLS_PORT):
            argv.append(str(port))
        elif word == "<files>":
            argv.extend(files)
        elif re.fullmatch(r"CT1\.(key|crt)", word):
            assert certs, f"{line!r} needs a client certificate"
            argv.append(f"{certs}/{word}")
        else:
            assert not word.startswith("<"), f"unknown placeholder {word} in README line {line!r}"
            argv.append(word)
    return argv, env
