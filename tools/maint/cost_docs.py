"""The reference profiles' cost tables in README.md and docs/operations-tools.md (maintenance).

    python -m tools.maint.cost_docs                                  print the tables
    python -m tools.maint.cost_docs --write docs/operations-tools.md --write README.md   (make cost-docs)

Synthesizes the reference profiles (tools/profiles.py), estimates each with tools/ops/cost.py (the
estimate an operator gets from ``make cost``) and fills the marked blocks.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from config import ROOT
from tools.ops.cost import CostError, Estimate, PriceTable, estimate, reported
from tools.ops.tfjson import Stack

DOC = ROOT / "docs" / "operations-tools.md"
DOC_PROFILES = ("default", "prod", "scaled")


def markdown(estimates: Mapping[str, Estimate]) -> str:
    """A table per estimate (keyed by its title), then the assumptions once (for README and docs)."""
    parts = [e.markdown(title) for title, e in estimates.items()]
    first = next(iter(estimates.values()))
    parts.append("Assumptions:\n\n" + "\n".join(f"- {a}" for a in first.assumption_lines()))
    return "\n\n".join(parts)


# The summary's columns: what a reader budgets for, by resource type.
SUMMARY_GROUPS: dict[str, tuple[str, ...]] = {
    "hosts": ("aws_instance", "aws_autoscaling_group"),
    "database": ("aws_db_instance",),
    "front door and network": ("aws_eip", "aws_lb", "aws_nat_gateway", "aws_vpc_endpoint", "aws_flow_log"),
    "S3": ("aws_s3_bucket",),
}


def summary(estimates: Mapping[str, Estimate]) -> str:
    """One row per estimate: the total and what it is made of (README)."""
    heads = [*SUMMARY_GROUPS, "the rest"]
    first = next(iter(estimates.values()))
    rows = [
        f"{first.region}, {first.table.currency} per month, prices of {first.table.date},"
        " 500 GB of DICOM in S3 Standard (assumptions and every line: docs/operations-tools.md)",
        "",
        "| profile | " + " | ".join(heads) + " | total |",
        "|---|" + "---:|" * (len(heads) + 1),
    ]
    for title, e in estimates.items():
        sums = dict.fromkeys(heads, 0.0)
        for line in e.lines:
            rtype = line.address.split(".")[0]
            group = next((g for g, types in SUMMARY_GROUPS.items() if rtype in types), "the rest")
            sums[group] += line.monthly
        rows.append(f"| {title} | " + " | ".join(f"{sums[h]:.0f}" for h in heads) + f" | **{e.total:.0f}** |")
    return "\n".join(rows)


def reference_estimates(table: PriceTable | None = None) -> dict[str, Estimate]:
    """Synthesize the reference profiles (tools/maint/snapshot.py) and estimate each."""
    from tools.maint.snapshot import synthesize

    return {f"{p} profile": estimate(Stack.from_json(json.loads(synthesize(p))), table) for p in DOC_PROFILES}


BEGIN = "<!-- BEGIN cost (generated: python -m tools.maint.cost_docs --write docs/operations-tools.md) -->"
END = "<!-- END cost -->"
SUMMARY_BEGIN = "<!-- BEGIN cost summary (generated: make cost-docs) -->"
SUMMARY_END = "<!-- END cost summary -->"


def replace_block(text: str, generated: str, begin: str = BEGIN, end: str = END) -> str:
    """``text`` with the generated cost block between the markers replaced."""
    found = re.search(re.escape(begin) + r".*?" + re.escape(end), text, re.S)
    if not found:
        raise CostError(f"the document lacks the markers {begin} ... {end}")
    return text[: found.start()] + f"{begin}\n{generated}\n{end}" + text[found.end() :]


def write_blocks(text: str, estimates: Mapping[str, Estimate]) -> str:
    """Fill whichever generated blocks ``text`` has: the full tables, the summary, or both."""
    if BEGIN not in text and SUMMARY_BEGIN not in text:
        raise CostError(f"the document lacks the markers {BEGIN} ... {END} (or {SUMMARY_BEGIN} ... {SUMMARY_END})")
    if BEGIN in text:
        text = replace_block(text, markdown(estimates))
    if SUMMARY_BEGIN in text:
        text = replace_block(text, summary(estimates), SUMMARY_BEGIN, SUMMARY_END)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.maint.cost_docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="*", type=Path, help="synthesized cdk.tf.json file(s) (default: the profiles)")
    parser.add_argument("--write", type=Path, action="append", help="fill the marked blocks of this file (repeatable)")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.sources:
            estimates = {f"{s}": estimate(Stack.load(s)) for s in args.sources}
        else:
            estimates = reference_estimates()
        for target in args.write or []:
            target.write_text(write_blocks(target.read_text(), estimates))
            print(f"wrote the cost tables into {target}")
        if not args.write:
            print(markdown(estimates))
        return 0

    return reported(body)


if __name__ == "__main__":
    sys.exit(main())
