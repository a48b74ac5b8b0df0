"""Synth benchmark: the default stack, lazy binding (ours) vs the stock binding import, same run.

``python -m bench.synth [--runs N]``: each run is a fresh ``python main.py`` process (what
``cdktf synth`` starts); prints a table and writes build/bench/synth.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from bench.common import median, run_measured, table, write_result
from config import ROOT

MODES = {
    "lazy binding (ours)": [sys.executable, str(ROOT / "main.py")],
    "stock import": [sys.executable, "-m", "tools.harness.stock_synth"],
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(runs):  # interleaved, so drift on the machine hits both modes alike
            for mode, command in MODES.items():
                env = {
                    **os.environ,
                    "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
                    "CDKTF_OUTDIR": f"{out}/{len(results)}",
                }
                seconds, mib = run_measured(command, env)
                results.setdefault(mode, {"seconds": [], "peak_mib": []})
                results[mode]["seconds"].append(round(seconds, 2))
                results[mode]["peak_mib"].append(mib)
    ours, stock = (results[m] for m in MODES)
    ratio = median(stock["seconds"]) / median(ours["seconds"])
    rows = [["synth of the default stack", "median s", "peak MiB (process tree)", "runs"]]
    rows += [[m, f"{median(r['seconds']):.2f}", f"{median(r['peak_mib']):.0f}", str(runs)] for m, r in results.items()]
    print(table(rows))
    print(f"speed-up: {ratio:.1f}x")
    write_result("synth", {"runs": results, "speedup": round(ratio, 2)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
