"""Read a synthesized ``cdk.tf.json`` the way the maintenance generators need it: resources under
stable names, the references between them, and the region each one is created in.

Shared by ``tools.maint.diagram`` and ``tools.ops.cost``. Works on the JSON alone (no cdktf, no
jsii), so it reads the output of any profile, or of ``cdktf synth`` on another machine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# cdktf appends "_" and 8 hex digits (a hash of the construct path) to every logical id it derives;
# ids pinned with overrideLogicalId (the stateful resources) have none. Dropping the hash gives names
# that read like the construct path and do not change when an unrelated construct moves.
_HASH_SUFFIX = re.compile(r"_[0-9A-F]{8}$")
# A reference inside a Terraform expression: [data.]<type>.<name>[.attr][[index]]...
_REFERENCE = re.compile(
    r"(?<![\w.])(?P<data>data\.)?(?P<type>[a-z][a-z0-9]*_[a-z0-9_]+)\.(?P<name>[A-Za-z_][A-Za-z0-9_-]*)"
    r"(?P<attr>(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*)"
)


class TfJsonError(ValueError):
    """The JSON cannot be read as a synthesized stack (or two names collide once the hash is gone)."""


def stable_name(logical_id: str) -> str:
    """The logical id without cdktf's ``_XXXXXXXX`` hash suffix."""
    return _HASH_SUFFIX.sub("", logical_id)


@dataclass(frozen=True, order=True)
class Address:
    """A resource (or data source) in the JSON: ``type.logical_id``."""

    type: str
    logical_id: str
    data: bool = False

    @property
    def stable(self) -> str:
        """``type.name`` with the hash suffix stripped: what the generators print."""
        prefix = "data." if self.data else ""
        return f"{prefix}{self.type}.{stable_name(self.logical_id)}"

    def __str__(self) -> str:
        prefix = "data." if self.data else ""
        return f"{prefix}{self.type}.{self.logical_id}"


@dataclass(frozen=True)
class Reference:
    """One reference in an expression: the target and the attribute path after it."""

    target: Address
    attribute: str  # e.g. ".arn" or ".master_user_secret[0].secret_arn"


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def is_plain(value: Any) -> bool:
    """A value Terraform does not have to compute: no ``${...}`` expression inside."""
    return not any("${" in s for s in strings(value))


def listed(value: Any) -> list[Any]:
    """A JSON or Terraform value that is one string or a list of them, as a list."""
    return [value] if isinstance(value, str) else list(value or [])


def _as_statement(block: Mapping[str, Any]) -> dict[str, Any]:
    """An ``aws_iam_policy_document`` statement block as IAM JSON."""
    statement: dict[str, Any] = {"Effect": block.get("effect", "Allow")}
    if block.get("sid"):
        statement["Sid"] = block["sid"]
    for key, field_ in (("Action", "actions"), ("NotAction", "not_actions"), ("Resource", "resources")):
        if block.get(field_):
            statement[key] = listed(block[field_])
    principal: dict[str, list[str]] = {}
    for p in block.get("principals", []):
        principal.setdefault(str(p.get("type")), []).extend(listed(p.get("identifiers")))
    if principal:
        statement["Principal"] = principal
    condition: dict[str, dict[str, Any]] = {}
    for c in block.get("condition", []):
        condition.setdefault(str(c.get("test")), {})[str(c.get("variable"))] = listed(c.get("values"))
    if condition:
        statement["Condition"] = condition
    return statement


@dataclass(frozen=True)
class Stack:
    """A synthesized stack's JSON, indexed."""

    data: Mapping[str, Any]
    name: str
    resources: Mapping[Address, Mapping[str, Any]] = field(repr=False)
    data_sources: Mapping[Address, Mapping[str, Any]] = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Stack:
        if not isinstance(data, Mapping) or "resource" not in data:
            raise TfJsonError("not a synthesized stack: no top-level 'resource' block")
        resources = {
            Address(rtype, lid): body
            for rtype, items in sorted(data.get("resource", {}).items())
            for lid, body in sorted(items.items())
        }
        sources = {
            Address(dtype, lid, data=True): body
            for dtype, items in sorted(data.get("data", {}).items())
            for lid, body in sorted(items.items())
        }
        seen: dict[str, Address] = {}
        for address in resources:
            other = seen.setdefault(address.stable, address)
            if other != address:
                raise TfJsonError(f"{other} and {address} have the same name once the hash is dropped")
        name = str(data.get("//", {}).get("metadata", {}).get("stackName", "stack"))
        return cls(data=data, name=name, resources=resources, data_sources=sources)

    @classmethod
    def load(cls, path: Path) -> Stack:
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise TfJsonError(f"{path}: {exc}") from None

    # -- lookups ------------------------------------------------------------------------------------

    def of_type(self, rtype: str) -> dict[Address, Mapping[str, Any]]:
        return {a: b for a, b in self.resources.items() if a.type == rtype}

    def types(self) -> set[str]:
        return {a.type for a in self.resources}

    def body(self, address: Address) -> Mapping[str, Any]:
        return self.resources[address] if not address.data else self.data_sources[address]

    def exists(self, address: Address) -> bool:
        return address in (self.data_sources if address.data else self.resources)

    def references(self, node: Any) -> list[Reference]:
        """Every reference to a resource or data source of this stack in ``node`` (sorted, unique)."""
        found: set[tuple[Address, str]] = set()
        for text in strings(node):
            if "${" not in text:
                continue
            for m in _REFERENCE.finditer(text):
                address = Address(m["type"], m["name"], data=bool(m["data"]))
                if self.exists(address):
                    found.add((address, m["attr"]))
        return [Reference(a, attr) for a, attr in sorted(found)]

    def targets(self, node: Any, rtype: str | None = None) -> list[Address]:
        """The addresses ``node`` refers to (optionally only of ``rtype``), sorted, unique."""
        found = {r.target for r in self.references(node) if rtype is None or r.target.type == rtype}
        return sorted(found)

    def depends_on(self, address: Address) -> list[Address]:
        found = set()
        for item in self.body(address).get("depends_on", []):
            rtype, _, lid = str(item).partition(".")
            if self.exists(Address(rtype, lid)):
                found.add(Address(rtype, lid))
        return sorted(found)

    def policy_statements(self, policy: Any) -> list[Mapping[str, Any]]:
        """A policy's statements as IAM JSON: parsed from its JSON text, or built from the
        ``aws_iam_policy_document`` data source it names (its ``${...}`` values left as they are)."""
        if not isinstance(policy, str):
            return []
        if policy.startswith("${"):
            return [
                _as_statement(block)
                for source in self.targets(policy, "aws_iam_policy_document")
                for block in self.body(source).get("statement", [])
            ]
        statements = json.loads(policy).get("Statement", [])
        return [statements] if isinstance(statements, dict) else list(statements)

    # -- providers and regions ----------------------------------------------------------------------

    def provider_regions(self) -> dict[str, str | None]:
        """AWS provider alias ("" for the default) -> its region if written as a plain string."""
        regions: dict[str, str | None] = {}
        for block in self.data.get("provider", {}).get("aws", []):
            region = block.get("region")
            regions[str(block.get("alias", ""))] = region if isinstance(region, str) and is_plain(region) else None
        return regions

    def provider_alias(self, address: Address) -> str:
        """The alias of the AWS provider a resource uses ("" for the default provider)."""
        provider = str(self.body(address).get("provider", ""))
        return provider.split(".", 1)[1] if provider.startswith("aws.") else ""

    def tag(self, key: str) -> str | None:
        """A default tag of the default AWS provider, if plain."""
        for block in self.data.get("provider", {}).get("aws", []):
            if block.get("alias"):
                continue
            for tags in block.get("default_tags", []):
                value = tags.get("tags", {}).get(key)
                if isinstance(value, str) and is_plain(value):
                    return value
        return None
