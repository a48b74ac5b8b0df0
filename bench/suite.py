"""Test-suite benchmark: wall time of the CI suite by test module (marker groups), from the JUnit
report that ``make test`` writes. ``python -m bench.suite [build/junit.xml]``."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

from bench.common import table, write_result
from config import ROOT


def main() -> int:
    report = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "junit.xml"
    if not report.exists():
        print(
            f"test suite: no {report.relative_to(ROOT) if report.is_relative_to(ROOT) else report} yet;"
            " run `make test` (it writes the report), then `python -m bench.suite`"
        )
        return 0
    by_module: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314 - our own report
        module = case.get("classname", "?").rsplit(".", 1)[-1]
        by_module[module] += float(case.get("time", 0))
        counts[module] += 1
    rows = [["test module", "tests", "seconds"]]
    rows += [[m, str(counts[m]), f"{t:.1f}"] for m, t in sorted(by_module.items(), key=lambda kv: -kv[1])]
    rows.append(["total", str(sum(counts.values())), f"{sum(by_module.values()):.1f}"])
    print(table(rows))
    write_result("suite", {m: round(t, 1) for m, t in by_module.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
