"""Construct-level tests: one construct in a test stack, synthesized and checked with CDKTF's own
testing API (``cdktf.Testing``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import cdktf
import pytest
from cdktf import TerraformStack

import modules  # noqa: F401 - installs the lazy AWS binding before the provider classes are imported
from modules.account import Account


class Built:
    """The synthesized JSON text of a test stack and its parsed form."""

    def __init__(self, text: str):
        self.text = text
        self.data: dict[str, Any] = json.loads(text)

    def resources(self, rtype: str) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = self.data.get("resource", {}).get(rtype, {})
        return found

    def has(self, rtype: str, properties: dict[str, Any] | None = None) -> bool:
        if properties is None:
            return bool(cdktf.Testing.to_have_resource(self.text, rtype))
        return bool(cdktf.Testing.to_have_resource_with_properties(self.text, rtype, properties))

    def has_data(self, dtype: str, properties: dict[str, Any]) -> bool:
        return bool(cdktf.Testing.to_have_data_source_with_properties(self.text, dtype, properties))


@pytest.fixture
def build() -> Callable[[Callable[[TerraformStack, Account], Any]], Built]:
    """``build(lambda stack, account: Construct(stack, ...))`` -> the synthesized test stack."""

    def run(make: Callable[[TerraformStack, Account], Any]) -> Built:
        stack = TerraformStack(cdktf.Testing.app(), "test")
        make(stack, Account(stack, "account"))
        return Built(cdktf.Testing.synth(stack))

    return run
