"""The site key alone: rotation, its policy, and CloudTrail's use only when granted."""

from __future__ import annotations

import json

from cdktf_cdktf_provider_aws.kms_alias import KmsAlias
from cdktf_cdktf_provider_aws.kms_key import KmsKey

from modules.key import SiteKey, SiteKeyProps


def key_policy(built) -> dict:
    return json.loads(built.resources(KmsKey.TF_RESOURCE_TYPE)["site_key"]["policy"])


def test_rotation_alias_and_no_trail_statement_by_default(build):
    built = build(lambda stack, account: SiteKey(stack, "key", props=SiteKeyProps(name="site", account=account)))
    assert built.has(KmsKey.TF_RESOURCE_TYPE, {"enable_key_rotation": True, "deletion_window_in_days": 30})
    assert built.has(KmsAlias.TF_RESOURCE_TYPE, {"name": "alias/site"})
    sids = [s["Sid"] for s in key_policy(built)["Statement"]]
    assert sids == ["AccountAdministersAndDelegates", "CloudWatchLogsUse"]


def test_allow_cloudtrail_adds_conditioned_statements(build):
    def make(stack, account):
        SiteKey(stack, "key", props=SiteKeyProps(name="site", account=account)).allow_cloudtrail()

    statements = key_policy(build(make))["Statement"]
    trail = [s for s in statements if s["Principal"] == {"Service": "cloudtrail.amazonaws.com"}]
    assert [s["Sid"] for s in trail] == ["CloudTrailEncryptsLogs", "CloudTrailPublishesToEncryptedTopic"]
    assert all("Condition" in s for s in trail), "every service grant is conditioned on this account"
