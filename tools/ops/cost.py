"""A monthly cost estimate of a synthesized stack, from the dated price table tools/ops/prices.json.

    python -m tools.ops.cost --configured [--region R] [--json]      (make cost)
    python -m tools.ops.cost cdktf.out/stacks/orthweb/cdk.tf.json [--region R] [--json]

One line per priced resource, the monthly total, the table's date and every assumption (hours per
month, GB stored, log volume, LCUs) it used. Values written plainly in the JSON are read from it
(instance_type, instance_class, allocated_storage, multi_az, volume_size, desired_capacity); the
region is the provider's when it is a plain string, or ``--region``. A resource type that is neither
priced nor listed as free in the table stops the estimate (exit 2, naming it), so a new type cannot
slip in at zero. The reference profiles' tables in the docs come from tools/maint/cost_docs.py.

The figures are AWS public list prices as of the table's date, several of them approximations:
an estimate to check with the AWS Pricing Calculator before budgeting, not a quote.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import ROOT
from tools.ops.tfjson import Address, Stack, TfJsonError, is_plain

PRICES = Path(__file__).with_name("prices.json")
EXIT_ERROR = 2


class CostError(ValueError):
    """The stack cannot be priced with this table (unknown type, region, instance type, ...)."""


# -- the price table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PriceTable:
    date: str
    currency: str
    assumptions: Mapping[str, Mapping[str, Any]]  # name -> {"value", "meaning"}
    priced: Mapping[str, str]  # resource type -> how it is priced
    free: Mapping[str, str]  # resource type (or family pattern such as aws_iam_*) -> why it costs nothing
    regions: Mapping[str, Mapping[str, Any]]

    @classmethod
    def load(cls, path: Path = PRICES) -> PriceTable:
        data = json.loads(path.read_text())
        return cls(
            date=data["date"],
            currency=data["currency"],
            assumptions=data["assumptions"],
            priced=data["priced"],
            free=data["free"],
            regions=data["regions"],
        )

    def assume(self, name: str) -> Any:
        return self.assumptions[name]["value"]

    def is_free(self, rtype: str) -> bool:
        return any(fnmatch.fnmatchcase(rtype, pattern) for pattern in self.free)

    def unpriced(self, types: set[str]) -> list[str]:
        """The types with neither a price entry nor a place in the free list."""
        return sorted(t for t in types if t not in self.priced and not self.is_free(t))

    def problems(self) -> list[str]:
        """What makes the table inconsistent: a type both priced and free, a priced type without a
        rule here (or the reverse), a region missing a price the others have, a negative price."""
        found = [f"{t}: both priced and free" for t in sorted(self.priced) if self.is_free(t)]
        found += [f"{t}: priced in {PRICES.name} but no rule in cost.py" for t in sorted(set(self.priced) - set(RULES))]
        found += [
            f"{t}: a rule in cost.py but not priced in {PRICES.name}" for t in sorted(set(RULES) - set(self.priced))
        ]
        first, reference = next(iter(self.regions.items()))
        for name, block in self.regions.items():
            shape, numbers = _leaves(block)
            if shape != _leaves(reference)[0]:
                found.append(f"{name}: prices differ from {first}'s in {sorted(shape ^ _leaves(reference)[0])}")
            found += [f"{name}: {key} is not a price ({value!r})" for key, value in numbers if value < 0]
        return found

    def region(self, name: str) -> Mapping[str, Any]:
        if name not in self.regions:
            raise CostError(
                f"no prices for region {name!r}; {PRICES.name} (dated {self.date}) has: {', '.join(self.regions)}"
            )
        return self.regions[name]


def _leaves(block: Mapping[str, Any], prefix: str = "") -> tuple[set[str], list[tuple[str, float]]]:
    """The key paths of a region's prices, and each (path, number); a non-number counts as -1."""
    keys: set[str] = set()
    numbers: list[tuple[str, float]] = []
    for key, value in block.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            more_keys, more_numbers = _leaves(value, f"{path}.")
            keys |= more_keys
            numbers += more_numbers
        else:
            keys.add(path)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            numbers.append((path, float(value) if ok else -1.0))
    return keys, numbers


# -- results --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One component of a resource's monthly cost."""

    what: str
    usd: float


@dataclass(frozen=True)
class Line:
    """One priced resource."""

    address: str  # type.name without cdktf's hash
    region: str
    items: tuple[Item, ...]

    @property
    def monthly(self) -> float:
        # fsum: the same cents on every Python (3.12 made sum() of floats compensated, 3.11's is not).
        return math.fsum(i.usd for i in self.items)

    @property
    def detail(self) -> str:
        return "; ".join(i.what for i in self.items)


@dataclass(frozen=True)
class Estimate:
    stack: str
    region: str
    table: PriceTable
    lines: tuple[Line, ...]
    free_types: tuple[str, ...]

    @property
    def total(self) -> float:
        return round(math.fsum(line.monthly for line in self.lines), 2)

    def assumption_lines(self) -> list[str]:
        return [f"{name} = {_show(a['value'])}: {a['meaning']}" for name, a in self.table.assumptions.items()]

    def text(self) -> str:
        head = [
            f"Monthly cost estimate of stack {self.stack!r} in {self.region}",
            f"prices: tools/ops/{PRICES.name}, dated {self.table.date} (AWS public on-demand list prices,"
            " estimates: check before budgeting)",
            "",
        ]
        width = max([len(line.address) for line in self.lines] + [10])
        body = [
            f"{line.address:<{width}}  {line.monthly:>9.2f}  {line.detail}"
            + (f" [{line.region}]" if line.region != self.region else "")
            for line in self.lines
        ]
        tail = [
            f"{'total':<{width}}  {self.total:>9.2f}  {self.table.currency} per month",
            "",
            *textwrap.wrap(f"no charge: {', '.join(self.free_types)}", 110, subsequent_indent="  "),
            "assumptions:",
            *(f"  {a}" for a in self.assumption_lines()),
        ]
        return "\n".join(head + body + tail) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "region": self.region,
            "currency": self.table.currency,
            "prices_date": self.table.date,
            "total_monthly": self.total,
            "lines": [
                {
                    "resource": line.address,
                    "region": line.region,
                    "monthly": round(line.monthly, 2),
                    "items": [{"what": i.what, "monthly": round(i.usd, 4)} for i in line.items],
                }
                for line in self.lines
            ],
            "free_types": list(self.free_types),
            "assumptions": {name: a["value"] for name, a in self.table.assumptions.items()},
        }

    def markdown(self, title: str) -> str:
        rows = [
            f"**{title}** ({self.region}; prices of {self.table.date}; an estimate, check before budgeting)",
            "",
            f"| resource | priced as | {self.table.currency} / month |",
            "|---|---|---:|",
        ]
        rows += [f"| `{line.address}` | {line.detail} | {line.monthly:.2f} |" for line in self.lines]
        rows.append(f"| **total** | | **{self.total:.2f}** |")
        return "\n".join(rows)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


# -- reading values from the JSON ------------------------------------------------------------------------


@dataclass(frozen=True)
class Pricer:
    """Prices one stack's resources in their regions."""

    stack: Stack
    table: PriceTable
    region: str  # of the default provider

    @property
    def hours(self) -> float:
        return float(self.table.assume("hours_per_month"))

    def region_of(self, address: Address) -> str:
        alias = self.stack.provider_alias(address)
        if not alias:
            return self.region
        region = self.stack.provider_regions().get(alias)
        if region is None:
            raise CostError(f"{address.stable}: the region of provider aws.{alias} is not a plain string")
        return region

    def prices(self, address: Address) -> Mapping[str, Any]:
        return self.table.region(self.region_of(address))

    def price(self, address: Address, key: str, item: str | None = None) -> float:
        block = self.prices(address)[key]
        if item is None:
            return float(block)
        if item not in block:
            raise CostError(
                f"{address.stable}: no {key} price for {item!r} in {self.region_of(address)};"
                f" {PRICES.name} has: {', '.join(block)}"
            )
        return float(block[item])

    def plain(self, address: Address, value: Any, what: str) -> Any:
        if value is None or not is_plain(value):
            raise CostError(f"{address.stable}: {what} is not a plain value in the JSON ({value!r}); cannot price it")
        return value


def _int(p: Pricer, address: Address, value: Any, what: str) -> int:
    value = p.plain(address, value, what)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise CostError(f"{address.stable}: {what} {value!r} is not a whole number") from None


def _bool(p: Pricer, address: Address, value: Any, what: str) -> bool:
    if value is None:
        return False
    value = p.plain(address, value, what)
    return value is True or str(value).lower() == "true"


def _template(p: Pricer, address: Address) -> Mapping[str, Any]:
    body = p.stack.body(address)
    found = p.stack.targets(body.get("launch_template", body.get("mixed_instances_policy")), "aws_launch_template")
    return p.stack.body(found[0]) if found else {}


def _setting(p: Pricer, address: Address, key: str) -> Any:
    body = p.stack.body(address)
    return body[key] if key in body else _template(p, address).get(key)


def _volumes(p: Pricer, address: Address) -> list[tuple[int, str]]:
    """(GB, volume type) of a host's EBS volumes, from itself or its launch template."""
    root = p.stack.body(address).get("root_block_device")
    if isinstance(root, list):
        root = root[0] if root else None
    if root:
        return [(_int(p, address, root.get("volume_size"), "volume_size"), str(root.get("volume_type", "gp3")))]
    found = []
    for mapping in _template(p, address).get("block_device_mappings", []) or []:
        ebs = mapping.get("ebs") or {}
        if ebs:
            found.append((_int(p, address, ebs.get("volume_size"), "volume_size"), str(ebs.get("volume_type", "gp3"))))
    return found or [(int(p.table.assume("root_volume_gb_default")), "gp3")]


def _monitored(p: Pricer, address: Address) -> bool:
    value = _setting(p, address, "monitoring")
    if isinstance(value, dict):  # a launch template's monitoring block
        value = value.get("enabled")
    return _bool(p, address, value, "monitoring")


# -- the rules, one per priced type ------------------------------------------------------------------------

Rule = Callable[[Pricer, Address, Mapping[str, Any]], list[Item]]


def _hosts(p: Pricer, address: Address, count: int) -> list[Item]:
    itype = str(p.plain(address, _setting(p, address, "instance_type"), "instance_type"))
    times = f"{count} x " if count != 1 else ""
    items = [Item(f"{times}{itype} x {p.hours:g} h", count * p.hours * p.price(address, "ec2_hour", itype))]
    for gb, vtype in _volumes(p, address):
        items.append(Item(f"{times}{gb} GB {vtype}", count * gb * p.price(address, "ebs_gb_month", vtype)))
    if _monitored(p, address):
        items.append(Item(f"{times}detailed monitoring", count * p.price(address, "ec2_detailed_monitoring_month")))
    return items


def _instance(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    return _hosts(p, address, 1)


def _autoscaling_group(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    # Without desired_capacity AWS starts min_size instances.
    count = body.get("desired_capacity", body.get("min_size"))
    return _hosts(p, address, _int(p, address, count, "desired_capacity"))


def _db_instance(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    engine = str(p.plain(address, body.get("engine"), "engine"))
    if engine != "postgres":
        raise CostError(f"{address.stable}: {PRICES.name} prices RDS for PostgreSQL only, not {engine!r}")
    klass = str(p.plain(address, body.get("instance_class"), "instance_class"))
    multi = _bool(p, address, body.get("multi_az"), "multi_az")
    # Multi-AZ runs a standby instance with its own storage: both are billed twice.
    copies, az = (2, " x 2 (Multi-AZ)") if multi else (1, "")
    gb = _int(p, address, body.get("allocated_storage"), "allocated_storage")
    storage = str(p.plain(address, body.get("storage_type", "gp2"), "storage_type"))
    items = [
        Item(f"{klass} x {p.hours:g} h{az}", copies * p.hours * p.price(address, "rds_postgres_hour", klass)),
        Item(f"{gb} GB {storage}{az}", copies * gb * p.price(address, "rds_storage_gb_month", storage)),
    ]
    if _bool(p, address, body.get("manage_master_user_password"), "manage_master_user_password"):
        items.append(Item("RDS-managed master secret", p.price(address, "secret_month")))
    if _int(p, address, body.get("monitoring_interval", 0), "monitoring_interval") > 0:
        gb_logs = float(p.table.assume("rds_enhanced_monitoring_gb_month"))
        items.append(Item(f"Enhanced Monitoring {gb_logs:g} GB logs", gb_logs * p.price(address, "logs_ingest_gb")))
    return items


def _eip(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    return [Item(f"public IPv4 x {p.hours:g} h", p.hours * p.price(address, "public_ipv4_hour"))]


def _vpc_endpoint(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    kind = str(body.get("vpc_endpoint_type", "Gateway"))
    service = str(body.get("service_name", "")).rsplit(".", 1)[-1]
    if kind == "Gateway":
        return [Item(f"gateway endpoint ({service}): no charge", 0.0)]
    subnets = body.get("subnet_ids")
    if not isinstance(subnets, list):
        raise CostError(f"{address.stable}: subnet_ids is not a list in the JSON; cannot count the AZs")
    azs = len(subnets)
    return [
        Item(
            f"interface endpoint ({service}) x {azs} AZ x {p.hours:g} h",
            azs * p.hours * p.price(address, "vpce_interface_az_hour"),
        )
    ]


def _lb(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    # Terraform's default load_balancer_type is "application".
    kind = "nlb" if body.get("load_balancer_type") == "network" else "alb"
    lcu = float(p.table.assume("lb_lcu"))
    return [
        Item(f"{kind.upper()} x {p.hours:g} h", p.hours * p.price(address, f"{kind}_hour")),
        Item(f"{lcu:g} LCU x {p.hours:g} h", lcu * p.hours * p.price(address, f"{kind}_lcu_hour")),
    ]


def _nat_gateway(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    return [Item(f"NAT gateway x {p.hours:g} h", p.hours * p.price(address, "nat_gateway_hour"))]


def _kms_key(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    return [Item("key-month", p.price(address, "kms_key_month"))]


def _secret(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    return [Item("secret-month", p.price(address, "secret_month"))]


def _log_group(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    # A group fed by a flow log: its ingestion is priced on the flow log (vended logs), storage here.
    fed_by_flow_log = any(
        address in p.stack.targets([f.get("log_destination"), f.get("log_group_name")])
        for f in p.stack.of_type("aws_flow_log").values()
    )
    gb = float(p.table.assume("flow_log_gb_month" if fed_by_flow_log else "log_gb_ingested_per_group_month"))
    days = _int(p, address, body.get("retention_in_days", 0), "retention_in_days")
    cap = int(p.table.assume("log_months_kept_max"))
    months = min(days / (365 / 12), cap) if days else cap
    stored = gb * months * float(p.table.assume("log_compressed_ratio"))
    ingest = Item(f"{gb:g} GB ingested", gb * p.price(address, _ingest_key(body)))
    items = [Item("ingestion priced with the flow log", 0.0)] if fed_by_flow_log else [ingest]
    items.append(Item(f"{stored:.2f} GB stored", stored * p.price(address, "logs_storage_gb_month")))
    return items


def _ingest_key(body: Mapping[str, Any]) -> str:
    return "logs_ingest_ia_gb" if body.get("log_group_class") == "INFREQUENT_ACCESS" else "logs_ingest_gb"


def _alarm(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    queries = body.get("metric_query") or []
    metrics = max(1, sum(1 for q in queries if isinstance(q, dict) and q.get("metric")))
    period = body.get("period")
    high = isinstance(period, int) and period < 60
    key = "alarm_high_resolution_metric_month" if high else "alarm_metric_month"
    label = f"{metrics} {'high-resolution ' if high else ''}alarm metric-month"
    return [Item(label, metrics * p.price(address, key))]


def _dashboard(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    return [Item("dashboard-month", p.price(address, "dashboard_month"))]


def _sns_topic(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    return [Item("free tier: first 1M publishes and 1,000 e-mails a month", 0.0)]


def _bucket_gb(p: Pricer, address: Address, seen: frozenset[Address] = frozenset()) -> float:
    """Assumed GB stored: a replica as its source, otherwise by the first key found in its name."""
    for cfg in p.stack.of_type("aws_s3_bucket_replication_configuration").values():
        if address in p.stack.targets(cfg.get("rule"), "aws_s3_bucket"):
            for source in p.stack.targets(cfg.get("bucket"), "aws_s3_bucket"):
                if source not in seen:
                    return _bucket_gb(p, source, seen | {address})
    body = p.stack.body(address)
    words = f"{address.logical_id} {body.get('bucket', '')} {body.get('bucket_prefix', '')}".lower()
    sizes: Mapping[str, float] = p.table.assume("s3_gb_stored")
    return float(next((gb for key, gb in sizes.items() if key in words), sizes["other"]))


# Storage classes a bucket's objects can be priced in (a replica's comes from its replication rule).
STORAGE_CLASS_PRICES = {
    "STANDARD": ("Standard", "s3_standard_gb_month"),
    "GLACIER_IR": ("Glacier Instant Retrieval", "s3_glacier_ir_gb_month"),
}
# S3 replication metrics per rule: latency, bytes and operations pending, operations failed.
REPLICATION_METRICS = 4


def _destinations(cfg: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The destination block of each rule of a replication configuration."""
    return [
        d
        for r in _blocks(cfg, "rule")
        if isinstance(r, dict)
        for d in _blocks(r, "destination")[:1]
        if isinstance(d, dict)
    ]


def _replica_storage_class(p: Pricer, address: Address) -> str:
    """The storage class replication writes into ``address`` (STANDARD when it is no replica)."""
    for cfg in p.stack.of_type("aws_s3_bucket_replication_configuration").values():
        for destination in _destinations(cfg):
            if address in p.stack.targets(destination.get("bucket"), "aws_s3_bucket"):
                return str(p.plain(address, destination.get("storage_class", "STANDARD"), "storage_class"))
    return "STANDARD"


def _s3_bucket(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    gb = _bucket_gb(p, address)
    storage_class = _replica_storage_class(p, address)
    if storage_class not in STORAGE_CLASS_PRICES:
        raise CostError(
            f"{address.stable}: no price for storage class {storage_class!r}; {PRICES.name} has:"
            f" {', '.join(STORAGE_CLASS_PRICES)}"
        )
    label, key = STORAGE_CLASS_PRICES[storage_class]
    return [Item(f"{gb:g} GB {label}", gb * p.price(address, key))]


def _replication(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    sources = p.stack.targets(body.get("bucket"), "aws_s3_bucket")
    regions = {p.region_of(d) for d in p.stack.targets(body.get("rule"), "aws_s3_bucket")}
    source_region = p.region_of(sources[0]) if sources else p.region_of(address)
    items = _replication_metrics(p, address, body)
    if regions <= {source_region}:
        return [Item("same-region replication: no transfer charge", 0.0), *items]
    gb = float(p.table.assume("s3_replication_gb_month"))
    price = p.table.region(source_region)["inter_region_transfer_gb"]
    replicated = f"{gb:g} GB replicated to {', '.join(sorted(regions - {source_region}))}"
    return [Item(replicated, gb * float(price)), *items]


def _replication_metrics(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    """Replication metrics are billed as CloudWatch custom metrics, per rule that turns them on."""
    on = sum(
        1
        for d in _destinations(body)
        if any(isinstance(m, dict) and m.get("status") == "Enabled" for m in _blocks(d, "metrics"))
    )
    if not on:
        return []
    metrics = on * REPLICATION_METRICS
    return [Item(f"{metrics} replication metrics", metrics * p.price(address, "cloudwatch_metric_month"))]


def _blocks(body: Mapping[str, Any], key: str) -> list[Any]:
    """A nested block as a list (Terraform JSON writes one block as an object or a list of them)."""
    value = body.get(key)
    return value if isinstance(value, list) else [value] if value else []


def _flow_log(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    gb = float(p.table.assume("flow_log_gb_month"))
    to_s3 = body.get("log_destination_type") == "s3"
    key = "vended_logs_s3_gb" if to_s3 else "logs_ingest_gb"
    return [Item(f"{gb:g} GB vended logs to {'S3' if to_s3 else 'CloudWatch Logs'}", gb * p.price(address, key))]


def _cloudtrail(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    selectors = json.dumps([body.get("event_selector"), body.get("advanced_event_selector")])
    if "data_resource" not in selectors and "resources.type" not in selectors:
        return [Item("management events: first copy free", 0.0)]
    events = float(p.table.assume("cloudtrail_data_events_month"))
    return [Item(f"{events:,.0f} data events", events / 100_000 * p.price(address, "cloudtrail_data_events_per_100k"))]


def _backup_plan(p: Pricer, address: Address, body: Mapping[str, Any]) -> list[Item]:
    gb = float(p.table.assume("backup_gb_stored"))
    return [Item(f"{gb:g} GB snapshots", gb * p.price(address, "backup_rds_gb_month"))]


RULES: dict[str, Rule] = {
    "aws_instance": _instance,
    "aws_autoscaling_group": _autoscaling_group,
    "aws_db_instance": _db_instance,
    "aws_eip": _eip,
    "aws_vpc_endpoint": _vpc_endpoint,
    "aws_lb": _lb,
    "aws_nat_gateway": _nat_gateway,
    "aws_kms_key": _kms_key,
    "aws_kms_replica_key": _kms_key,
    "aws_secretsmanager_secret": _secret,
    "aws_cloudwatch_log_group": _log_group,
    "aws_cloudwatch_metric_alarm": _alarm,
    "aws_cloudwatch_dashboard": _dashboard,
    "aws_sns_topic": _sns_topic,
    "aws_s3_bucket": _s3_bucket,
    "aws_s3_bucket_replication_configuration": _replication,
    "aws_flow_log": _flow_log,
    "aws_cloudtrail": _cloudtrail,
    "aws_backup_plan": _backup_plan,
}


# -- the estimate -----------------------------------------------------------------------------------------


def default_region(stack: Stack, override: str | None) -> str:
    if override:
        return override
    region = stack.provider_regions().get("")
    if not region:
        raise CostError("the AWS provider's region is not a plain string in the JSON; pass --region")
    return region


def estimate(stack: Stack, table: PriceTable | None = None, region: str | None = None) -> Estimate:
    table = table or PriceTable.load()
    missing = table.unpriced(stack.types())
    if missing:
        raise CostError(
            f"resource types with no price entry and not listed as free in {PRICES.name}: {', '.join(missing)}"
        )
    pricer = Pricer(stack, table, default_region(stack, region))
    table.region(pricer.region)  # an unsupported region fails here, before any line
    lines = []
    for address, body in stack.resources.items():
        rule = RULES.get(address.type)
        if rule and address.type in table.priced:
            lines.append(Line(address.stable, pricer.region_of(address), tuple(rule(pricer, address, body))))
    free = tuple(sorted(t for t in stack.types() if t not in table.priced))
    return Estimate(stack.name, pricer.region, table, tuple(sorted(lines, key=lambda x: x.address)), free)


def configured_stack() -> Path:
    """The synthesized JSON of the site this checkout configures (make synth writes it)."""
    import os

    from config.inputs import ConfigError, load_config

    try:
        name = load_config(ROOT, os.environ).name
    except ConfigError as exc:
        raise CostError("; ".join(exc.problems)) from exc
    path = ROOT / "cdktf.out" / "stacks" / name / "cdk.tf.json"
    if not path.is_file():
        raise CostError(f"no synthesized stack at {path.relative_to(ROOT)}: run make synth first")
    return path


def reported(body: Callable[[], int]) -> int:
    """Run a cost command's ``body``; a CostError or TfJsonError becomes one ``cost:`` line on stderr
    and exit 2 (make cost and make cost-docs alike)."""
    try:
        return body()
    except (CostError, TfJsonError) as exc:
        print(f"cost: {exc}", file=sys.stderr)
        return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.ops.cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", type=Path, help="a synthesized cdk.tf.json")
    parser.add_argument(
        "--configured",
        action="store_true",
        help="the stack this checkout configures (orthweb.toml, ORTHWEB_*), as make synth left it in cdktf.out",
    )
    parser.add_argument("--region", help="price in this region instead of the provider's")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
    args = parser.parse_args(argv)

    def body() -> int:
        source = configured_stack() if args.configured else args.source
        if source is None:
            parser.print_usage(sys.stderr)
            print("cost: give one cdk.tf.json (or --configured)", file=sys.stderr)
            return EXIT_ERROR
        result = estimate(Stack.load(source), region=args.region)
        print(json.dumps(result.to_json(), indent=2) if args.json else result.text(), end="\n" if args.json else "")
        return 0

    return reported(body)


if __name__ == "__main__":
    sys.exit(main())
