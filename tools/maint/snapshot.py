"""Synthesize reference profiles and write or compare their ``cdk.tf.json``, byte for byte.

    python -m tools.maint.snapshot write DIR      # one DIR/<profile>.json per profile
    python -m tools.maint.snapshot compare DIR    # exit 1 and name each profile that differs

Used around refactorings that must not change what Terraform sees: write before, compare after.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from config.inputs import OrthwebConfig
from tools.profiles import SNAPSHOT_PROFILES as PROFILES


def synthesize(profile: str) -> bytes:
    from main import build_app

    config = OrthwebConfig(**PROFILES[profile]).validate()
    out = Path(tempfile.mkdtemp(prefix="orthweb-snapshot-"))
    try:
        build_app(config, str(out)).synth()
        return (out / "stacks" / config.name / "cdk.tf.json").read_bytes()
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("write", "compare"):
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    differ = []
    for profile in PROFILES:
        data, path = synthesize(profile), folder / f"{profile}.json"
        if argv[1] == "write":
            path.write_bytes(data)
            print(f"wrote {path} ({len(data)} bytes)")
        elif not path.exists() or path.read_bytes() != data:
            differ.append(profile)
        else:
            print(f"{profile}: identical ({len(data)} bytes)")
    for profile in differ:
        print(f"{profile}: DIFFERS from {folder / (profile + '.json')}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
