"""Embedding text with CDKTF tokens in Terraform expressions, escaped correctly.

CDKTF's ``Fn`` helpers refuse (or mis-escape) long text with quotes, so the expression is built
here and set as a raw override: static text is escaped as an HCL string literal (quotes,
backslashes, control characters, and ``${``/``%{`` which Terraform would otherwise interpolate),
while tokens become ``${reference}`` interpolations inside that literal. Each token is wrapped in
``${...}`` here: CDKTF resolves a token to a bare reference when it sits inside an expression it
opened itself, and to ``${reference}`` otherwise, depending on earlier ``$${`` text; the explicit
wrapping gives the same result in both cases.
"""

from __future__ import annotations

import re

TOKEN = re.compile(r"\$\{TfToken\[[A-Za-z0-9_.]+\]\}")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_literal(text: str) -> str:
    """``text`` as the inside of an HCL quoted string: no interpolation, no directive."""
    out = "".join(_ESCAPES.get(ch, ch) for ch in text)
    return out.replace("${", "$${").replace("%{", "%%{")


def quoted_template(text: str) -> str:
    """An HCL quoted template: static parts escaped, CDKTF tokens kept as interpolations."""
    parts: list[str] = []
    last = 0
    for match in TOKEN.finditer(text):
        parts.append(escape_literal(text[last : match.start()]))
        parts.append("${" + match.group(0) + "}")
        last = match.end()
    parts.append(escape_literal(text[last:]))
    return '"' + "".join(parts) + '"'


def base64gzip_expression(text: str) -> str:
    """A Terraform expression gzip-compressing then base64-encoding ``text`` at plan/apply time."""
    return "${base64gzip(" + quoted_template(text) + ")}"
