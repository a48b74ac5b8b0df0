"""Shared fixtures: synthesized stacks (default, prod, 3 AZs, every extra) and helpers to query them.

Test lanes: a module or test marks what it needs (``terraform``, ``security``, ``e2e``,
``rehearsal``, ``programs``, ``npm``, ``cli``, ``slow``); everything unmarked gets ``unit`` and runs
in ``make check`` with nothing but the Python dev dependencies.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config import ROOT
from config.inputs import OrthwebConfig
from tools.ops.terraform import terraform_cli_config
from tools.profiles import EXTRAS, PROD, PROFILES  # noqa: F401 - re-exported for the test modules

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("CHECKPOINT_DISABLE", "1")
# Terraform started from inside the jsii runtime (cdktf.Testing.to_be_valid_terraform) sees the
# environment the runtime started with: point it at the offline CLI configuration before any test
# module imports cdktf.
_TF_CLI = terraform_cli_config(ROOT / "build" / "terraform-cli")
if _TF_CLI:
    os.environ["TF_CLI_CONFIG_FILE"] = str(_TF_CLI)

SLOW_LANES = frozenset({"terraform", "security", "e2e", "rehearsal", "programs", "npm", "cli", "slow", "systemd"})


# The order in which parallel workers (make test: --dist loadfile --no-loadscope-reorder) take the
# modules: the two rehearsals first (about 7 minutes each, mostly Terraform waiting on the provider's
# fixed RDS waits, little CPU), then the modules that need the most CPU, so that the short ones fill
# the gaps at the end. Wall and CPU time by module: python -m bench.suite, docs/benchmarks.md.
SCHEDULE_FIRST = (
    "test_rehearsal",
    "test_rehearsal_scaled",
    "test_systemd_boot",
    "test_bootstrap",
    "test_e2e_scaled",
    "test_bootstrap_hygiene",
    "test_e2e",
    "test_terraform",
    "test_state",
    "test_recover",
    "test_e2e_hardening",
    "test_cli",
    "test_security",
    "test_aws_binding",
    "test_modalities",
    "test_install",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not SLOW_LANES & {mark.name for mark in item.iter_markers()}:
            item.add_marker(pytest.mark.unit)
    rank = {name: i for i, name in enumerate(SCHEDULE_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


@pytest.fixture(scope="session", autouse=True)
def _tmpdir_in_project(tmp_path_factory: pytest.TempPathFactory) -> None:
    # cdktf's Testing.app() leaves a temp folder per call: keep them inside pytest's own tree.
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("cdktf-tmp"))


@pytest.fixture
def no_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without a Terraform provider mirror: no ORTHWEB_TF_MIRROR, none of the known folders holds it."""
    from tools.ops import terraform

    monkeypatch.delenv("ORTHWEB_TF_MIRROR", raising=False)
    monkeypatch.setattr(terraform, "MIRROR_CANDIDATES", (str(tmp_path / "no-provider-mirror"),))


def synth_json(config: OrthwebConfig, outdir: Path) -> dict[str, Any]:
    from main import build_app

    app = build_app(config.validate(), str(outdir))
    app.synth()
    data: dict[str, Any] = json.loads((outdir / "stacks" / config.name / "cdk.tf.json").read_text())
    return data


# The site's secrets, by the stack's logical IDs (created empty: the host or operators fill them).
SITE_SECRETS = {
    *("admin_secret", "tls_secret", "ca_secret", "ca_cert_secret", "client_ca_secret", "clients_secret"),
    "users_secret",
}


class Synth:
    """A synthesized stack's JSON with small query helpers."""

    def __init__(self, data: dict[str, Any], outdir: Path, config: OrthwebConfig):
        self.data = data
        self.outdir = outdir
        self.config = config
        self.stack_dir = outdir / "stacks" / config.name

    def resources(self, rtype: str) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = self.data.get("resource", {}).get(rtype, {})
        return found

    def one(self, rtype: str) -> dict[str, Any]:
        found = self.resources(rtype)
        assert len(found) == 1, f"expected one {rtype}, found {sorted(found)}"
        return next(iter(found.values()))

    def data_sources(self, dtype: str) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = self.data.get("data", {}).get(dtype, {})
        return found

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
def synth_profile(tmp_path_factory: pytest.TempPathFactory):
    """A reference profile's synthesized stack, in a folder of this worker's own (Terraform may
    init there). Parallel workers synthesize each profile once per run and share it: the first
    synthesizes under a lock, the others copy its folder. The copy sits as deep as the original
    (the stack's local state path is relative to its folder)."""
    import fcntl
    import shutil

    base = tmp_path_factory.getbasetemp()
    shared = base.parent / "synth-shared" if os.environ.get("PYTEST_XDIST_WORKER") else None
    cache: dict[str, Synth] = {}

    def get(profile: str) -> Synth:
        if profile not in cache:
            config = OrthwebConfig(**PROFILES[profile])
            outdir = tmp_path_factory.mktemp(f"synth-{profile}")
            if shared is None:
                data = synth_json(config, outdir)
            else:
                source = shared / profile
                assert len(source.parts) == len(outdir.parts), "the shared synth must sit as deep as its copies"
                shared.mkdir(exist_ok=True)
                with open(shared / f"{profile}.lock", "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    if not (source / "done").exists():
                        shutil.rmtree(source, ignore_errors=True)
                        synth_json(config, source)
                        (source / "done").touch()
                shutil.copytree(source, outdir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("done"))
                data = json.loads((outdir / "stacks" / config.name / "cdk.tf.json").read_text())
            cache[profile] = Synth(data, outdir, config)
        return cache[profile]

    return get


@pytest.fixture(scope="session")
def default_stack(synth_profile) -> Synth:
    return synth_profile("default")


@pytest.fixture(scope="session")
def prod_stack(synth_profile) -> Synth:
    return synth_profile("prod")
