"""The rehearsal's perpetual-diff detector, on hand-made plans (no deploy needed)."""

from __future__ import annotations

import pytest

from tools.harness.rehearsal import classify_second_plan


def _change(rtype: str, before: dict, after: dict, unknown: dict | None = None, actions=("update",)) -> dict:
    return {
        "address": f"{rtype}.x",
        "type": rtype,
        "mode": "managed",
        "change": {
            "actions": list(actions),
            "before": before,
            "after": after,
            "after_unknown": unknown or {},
            # Like Terraform, a replacement names the attributes that force it.
            "replace_paths": [
                [k] for k in sorted(set(before) | set(after)) if k in ("launch_template", "instance_type")
            ],
        },
    }


@pytest.mark.parametrize(
    "changes,real",
    [
        (
            [
                _change(
                    "aws_db_instance", {"performance_insights_enabled": False}, {"performance_insights_enabled": True}
                )
            ],
            0,
        ),
        ([_change("aws_db_instance", {"final_snapshot_identifier": "a-1"}, {"final_snapshot_identifier": "a-2"})], 1),
        ([_change("aws_launch_template", {"latest_version": 1}, {}, {"latest_version": True})], 0),
        ([_change("aws_s3_bucket", {"tags": None}, {"tags": {}})], 0),
        ([_change("aws_s3_bucket", {"tags": {"a": "1"}}, {"tags": {"a": "2"}})], 1),
        # A replacement forced by a value unknown until apply: the new object's defaults are not diffs ...
        (
            [
                _change(
                    "aws_instance",
                    {"hibernation": False, "launch_template": [{"version": "1"}]},
                    {"launch_template": [{}]},
                    {"launch_template": True},
                    ("delete", "create"),
                )
            ],
            0,
        ),
        # ... but a replacement forced by a known value is one.
        ([_change("aws_instance", {"instance_type": "a"}, {"instance_type": "b"}, None, ("delete", "create"))], 1),
    ],
)
def test_second_plan_classifier(changes, real):
    found, _ = classify_second_plan({"resource_changes": changes})
    assert len(found) == real
