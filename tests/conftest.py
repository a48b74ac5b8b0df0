"""Shared fixtures: synthesized stacks (default, prod, 3 AZs) and helpers to query them."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("CHECKPOINT_DISABLE", "1")

from modules.aws_binding import use_lazy_binding  # noqa: E402

use_lazy_binding()  # before anything imports the AWS binding: each test process loads only what it uses

from stacks.config import OrthwebConfig  # noqa: E402

PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "prod": {"environment": "prod"},
    "az3": {"az_count": 3, "interface_endpoints": ("ssm", "secretsmanager")},
}
# Every optional extra switched on (validated and scanned, not planned).
EXTRAS: dict[str, Any] = {
    "environment": "prod",
    "cloudtrail": True,
    "object_lock_days": 30,
    "backup_retention_days": 35,
    "intelligent_tiering": True,
}


@pytest.fixture(scope="session", autouse=True)
def _tmpdir_in_project(tmp_path_factory) -> None:
    # cdktf's Testing.app() leaves a temp folder per call: keep them inside pytest's own tree.
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("cdktf-tmp"))


def synth_json(config: OrthwebConfig, outdir: Path) -> dict[str, Any]:
    from main import build_app

    app = build_app(config.validate(), str(outdir))
    app.synth()
    return json.loads((outdir / "stacks" / config.name / "cdk.tf.json").read_text())


class Synth:
    """A synthesized stack's JSON with small query helpers."""

    def __init__(self, data: dict[str, Any], outdir: Path, config: OrthwebConfig):
        self.data = data
        self.outdir = outdir
        self.config = config
        self.stack_dir = outdir / "stacks" / config.name

    def resources(self, rtype: str) -> dict[str, dict[str, Any]]:
        return self.data.get("resource", {}).get(rtype, {})

    def one(self, rtype: str) -> dict[str, Any]:
        found = self.resources(rtype)
        assert len(found) == 1, f"expected one {rtype}, found {sorted(found)}"
        return next(iter(found.values()))

    def data_sources(self, dtype: str) -> dict[str, dict[str, Any]]:
        return self.data.get("data", {}).get(dtype, {})

    def strings(self) -> Iterator[str]:
        def walk(node: Any) -> Iterator[str]:
            if isinstance(node, dict):
                for value in node.values():
                    yield from walk(value)
            elif isinstance(node, list):
                for value in node:
                    yield from walk(value)
            elif isinstance(node, str):
                yield node

        yield from walk(self.data)


@pytest.fixture(scope="session")
def synth_profile(tmp_path_factory):
    cache: dict[str, Synth] = {}

    def get(profile: str) -> Synth:
        if profile not in cache:
            config = OrthwebConfig(**({**PROFILES, "extras": EXTRAS})[profile])
            outdir = tmp_path_factory.mktemp(f"synth-{profile}")
            cache[profile] = Synth(synth_json(config, outdir), outdir, config)
        return cache[profile]

    return get


@pytest.fixture(scope="session")
def default_stack(synth_profile) -> Synth:
    return synth_profile("default")


@pytest.fixture(scope="session")
def prod_stack(synth_profile) -> Synth:
    return synth_profile("prod")
