"""``make preflight`` (tools/ops/preflight.py) and docs/production.md: the same checklist, item by item,
and a preflight that fails the configs broken on purpose and passes them once fixed."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from typing import Any

import pytest

from config.inputs import OrthwebConfig
from tests.conftest import synth_json
from tools.ops import preflight
from tools.ops.preflight import DOC, FAIL, ITEMS, PASS, WARN, Site, exit_code, run
from tools.profiles import PROD

HEADING = re.compile(r"^### (\d+)\. (.+) \(`([a-z-]+)`\)$", re.M)
DIGEST = "@sha256:" + "a" * 64


def sections() -> dict[str, tuple[int, str, str]]:
    """Checklist id -> (number, title, body) from docs/production.md."""
    text = DOC.read_text()
    found = list(HEADING.finditer(text))
    bodies = [text[m.end() : (found[i + 1].start() if i + 1 < len(found) else len(text))] for i, m in enumerate(found)]
    return {m.group(3): (int(m.group(1)), m.group(2), body) for m, body in zip(found, bodies, strict=True)}


def test_the_checklist_and_preflight_name_the_same_items_in_order():
    doc = sections()
    assert list(doc) == [item.id for item in ITEMS], "docs/production.md and tools/ops/preflight.py differ"
    assert [number for number, _, _ in doc.values()] == list(range(1, len(ITEMS) + 1))
    for item in ITEMS:
        _, title, body = doc[item.id]
        assert title == item.title, item.id
        inputs = re.search(r"^\*\*Inputs:\*\* (.+)$", body, re.M)
        assert inputs, f"{item.id}: no **Inputs:** line"
        assert tuple(re.findall(r"`(\w+)`", inputs.group(1))) == item.inputs, item.id
        for part in ("**Preflight:**", "**Verify:**"):
            assert part in body, f"{item.id}: no {part}"


def test_every_input_of_the_checklist_is_a_setting():
    settings = {f.name for f in dataclasses.fields(OrthwebConfig)}
    named = {name for item in ITEMS for name in item.inputs}
    assert named <= settings, named - settings


def test_the_doc_describes_each_status_the_preflight_gives(prod_stack):
    """Each item's **Preflight:** line names every status its check returned on the reference profiles."""
    doc = sections()
    seen: dict[str, set[str]] = {item.id: set() for item in ITEMS}
    for config, stack in ((prod_stack.config, prod_stack.data), (OrthwebConfig(), None)):
        site = Site(config, copy.deepcopy(stack) if stack else prod_stack.data)
        for finding in run(site):
            seen[finding.id].add(finding.status)
    for item_id, statuses in seen.items():
        line = re.search(r"^\*\*Preflight:\*\*(.+?)(?:\n\n|\Z)", doc[item_id][2], re.M | re.S)
        assert line, item_id
        for status in statuses:
            assert status in line.group(1), f"{item_id}: {status} not described"


# -- broken on purpose, then fixed -------------------------------------------------------------------------


def findings(config: OrthwebConfig, stack: dict) -> dict[str, str]:
    return {f.id: f.status for f in run(Site(config, copy.deepcopy(stack)))}


BROKEN: list[tuple[str, dict[str, Any]]] = [
    ("session-manager-only", {"ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb5nC2m1wV0Y2bKq3n8 x@y"}),
    ("deletion-protection", {"db_deletion_protection": False}),
]


@pytest.mark.parametrize("item_id,broken", BROKEN, ids=[f"{i}:{next(iter(b))}" for i, b in BROKEN])
def test_a_prod_site_broken_on_purpose_fails_that_item_and_exits_1(prod_stack, item_id, broken):
    config = OrthwebConfig(**{**PROD, **broken}).validate()
    found = findings(config, prod_stack.data)
    assert found[item_id] == FAIL
    assert [i for i, status in found.items() if status == FAIL] == [item_id], "only the broken item fails"
    assert exit_code(config, run(Site(config, prod_stack.data))) == preflight.EXIT_FAIL
    # The reference prod profile itself has no FAIL: preflight exits 0.
    fixed = OrthwebConfig(**PROD).validate()
    assert findings(fixed, prod_stack.data)[item_id] != FAIL
    assert exit_code(fixed, run(Site(fixed, prod_stack.data))) == 0


def test_outside_prod_a_fail_is_advice(default_stack):
    config = OrthwebConfig(allow_data_destroy=True)
    found = run(Site(config, default_stack.data))
    assert {f.id: f.status for f in found}["deletion-protection"] == FAIL
    assert {f.id: f.status for f in found}["client-networks"] == FAIL  # the whole Internet, no certificates
    assert exit_code(config, found) == 0


WARNED: list[tuple[str, dict[str, Any], str]] = [
    ("replica-region", {"replica_region": "none"}, "losing the region loses the DICOM archive"),
    ("replica-region", {"replica_region": "eu-west-1"}, "PHI leaves us for eu"),
    ("client-networks", {"dicom_client_cidrs": ("0.0.0.0/0",)}, "narrow the DICOM networks"),
    ("scaled-profile", {"db_multi_az": False}, "db_multi_az"),
    ("backups", {"backup_retention_days": 35, "noncurrent_version_expiration_days": 7}, "less than 30 days"),
    ("image-digests", {"nginx_image": "nginx:1.30.4"}, "nginx:1.30.4"),
    ("break-glass", {"break_glass_role_arns": ()}, "make recover"),
]


@pytest.mark.parametrize("item_id,change,words", WARNED, ids=[f"{i}:{next(iter(c))}" for i, c, _ in WARNED])
def test_decisions_left_to_a_person_are_warnings_saying_what(prod_stack, item_id, change, words):
    config = OrthwebConfig(**{**PROD, **change}).validate()
    finding = next(f for f in run(Site(config, prod_stack.data)) if f.id == item_id)
    assert finding.status == WARN and words in finding.detail, finding


def test_a_site_needing_more_elastic_ips_than_the_default_quota_is_warned(tmp_path):
    """Scaled over three zones: the site's address, two more balancer addresses, three NAT gateways."""
    config = OrthwebConfig(**PROD, hosts=3, az_count=3).validate()
    finding = next(f for f in run(Site(config, synth_json(config, tmp_path))) if f.id == "elastic-ips")
    assert finding.status == WARN and "needs 6 Elastic IPs" in finding.detail and "L-0263D0A3" in finding.detail
    single = next(f for f in run(Site(OrthwebConfig(**PROD), None)) if f.id == "elastic-ips")
    assert single.status == PASS and "needs 1 Elastic IP of" in single.detail


def test_the_account_is_asked_for_its_elastic_ip_quota_and_use(tmp_path, monkeypatch, capsys):
    """``--account`` asks the account (here the emulator; its quota answer is a stand-in of AWS's
    default, 5): addresses held for other things count against the quota, the site's own do not
    (a redeploy), and a scaled site over two zones (4 addresses) no longer fits beside 2 others."""
    from tools.harness.emulator import Emulator

    config = {**PROD, "name": "quota", "hosts": 2, "az_count": 2}
    for key, value in config.items():
        monkeypatch.setenv(f"ORTHWEB_{key.upper()}", ",".join(value) if isinstance(value, tuple) else str(value))
    with Emulator(tmp_path / "emulator") as emulator:
        for key, value in emulator.client_env().items():
            monkeypatch.setenv(key, value)
        import boto3

        ec2 = boto3.client("ec2", **emulator.boto_kwargs())
        tags = [{"ResourceType": "elastic-ip", "Tags": [{"Key": "Name", "Value": "quota-site"}]}]
        ec2.allocate_address(Domain="vpc", TagSpecifications=tags)  # the site's own, from an earlier deploy
        ec2.allocate_address(Domain="vpc")
        assert preflight.main(["--json", "--account"]) == 0
        fits = {i["id"]: i for i in json.loads(capsys.readouterr().out)["items"]}["elastic-ips"]
        assert fits["status"] == PASS and "holds 1 others of its quota of 5" in fits["detail"], fits
        ec2.allocate_address(Domain="vpc")
        assert preflight.main(["--json", "--account"]) == preflight.EXIT_FAIL
        over = {i["id"]: i for i in json.loads(capsys.readouterr().out)["items"]}["elastic-ips"]
        assert over["status"] == FAIL and "needs 4 Elastic IPs; the account holds 2 others" in over["detail"], over
        assert "AddressLimitExceeded" in over["detail"]


def test_a_site_with_every_item_done_passes_them_all(tmp_path):
    config = OrthwebConfig(
        **PROD,
        alarm_email="imaging-it@hospital.example",
        tls_certificate_secret="hospital/pacs-cert",  # noqa: S106 - a secret name, not a value
        backup_retention_days=35,
        hosts=3,
        hosts_max=6,
        orthanc_image=f"orthancteam/orthanc:26.8.1{DIGEST}",
        nginx_image=f"nginx:1.30.4{DIGEST}",
        cloudtrail=True,
        break_glass_role_arns=("arn:aws:iam::123456789012:role/pacs-break-glass",),
    ).validate()
    stack = synth_json(config, tmp_path)
    found = findings(config, stack)
    assert found.pop("team-state") == WARN, "a local state file until the state lives in S3"
    # The state in S3, as the S3 backend writes it (stacks/state.py, state_bucket).
    stack["terraform"]["backend"] = {"s3": {"bucket": "hospital-tfstate", "key": "orthweb/orthweb/terraform.tfstate"}}
    found = findings(config, stack)
    assert set(found.values()) == {PASS}, found


# -- the command ------------------------------------------------------------------------------------------


def test_the_command_reads_the_config_like_main_and_exits_by_environment(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(preflight, "ROOT", tmp_path)  # no orthweb.toml from the developer's checkout
    prod = {
        "ORTHWEB_ENVIRONMENT": "prod",
        "ORTHWEB_DICOM_CLIENT_AUTH": "certificate",
        "ORTHWEB_WEB_CLIENT_CIDRS": "10.20.0.0/16",
        "ORTHWEB_DICOM_CLIENT_CIDRS": "10.20.1.0/24",
    }
    assert preflight.main([], prod) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("orthweb preflight: site 'orthweb', environment prod")
    assert [line.split()[1] for line in lines[1:-1]] == [item.id for item in ITEMS]
    assert all(line.split()[0] in (PASS, WARN, FAIL) for line in lines[1:-1])
    assert not any(line.startswith(FAIL) for line in lines) and "replicated to us-west-2" in out
    (tmp_path / "orthweb.toml").write_text("db_deletion_protection = false\n")
    assert preflight.main(["--json"], prod) == preflight.EXIT_FAIL
    report = json.loads(capsys.readouterr().out)
    assert report["exit"] == 1
    assert {i["id"]: i["status"] for i in report["items"]}["deletion-protection"] == FAIL


def test_a_refused_config_exits_2_with_the_same_lines_as_synth(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(preflight, "ROOT", tmp_path)
    assert preflight.main([], {"ORTHWEB_REPLICA_REGION": "us-east-1"}) == preflight.EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert err.startswith("orthweb: config error: replica_region: 'us-east-1' is not allowed")
