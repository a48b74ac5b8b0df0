"""The architecture diagram, generated from a synthesized ``cdk.tf.json`` (Graphviz DOT, optional SVG).

    python -m tools.maint.diagram cdktf.out/stacks/orthweb/cdk.tf.json --dot out.dot [--svg out.svg]
    python -m tools.maint.diagram --docs      # docs/diagrams/{default,prod,scaled}.dot and .svg

Everything in the picture comes from the JSON: the nodes are the resources that make up the
architecture (network, host, load balancer, Elastic IP, database, buckets, key, secrets, logs,
alarms, endpoints); the traffic edges come from the security group rules and load balancer
listeners (through every Elastic IP of a balancer's subnet mappings), the hosts' way out from their
subnets' default routes (through the NAT gateways, drawn in their subnets' zones), the host's data
paths from its IAM policies, the "encrypts" edges from every ``kms_*`` attribute. So the diagram
shows what Terraform will build, not what someone remembered to draw.
Port names come from config/facts.py.

The DOT text is deterministic: nodes, clusters and edges sorted, ids are ``type.name`` with
cdktf's hash suffix dropped (tools/ops/tfjson.py). A test compares docs/diagrams/*.dot with what
the current stack gives, so a stack change needs a rerun of ``--docs``. The SVG is rendered by
``dot`` (Debian package ``graphviz``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config import ROOT, facts
from tools.ops.tfjson import Address, Stack, TfJsonError, is_plain

DIAGRAMS = ROOT / "docs" / "diagrams"
# The reference profiles drawn into docs/diagrams (defined once, in tools/maint/snapshot.py).
DOC_PROFILES = ("default", "prod", "scaled")

PORT_NAMES = {
    facts.HTTPS_PORT: "HTTPS",
    facts.DICOM_TLS_PORT: "DICOM TLS",
    facts.POSTGRES_PORT: "PostgreSQL",
    facts.SSH_PORT: "SSH",
}
CLIENTS = "clients"
INTERNET = "internet"
EXIT_USAGE = 2

HOST_TYPES = ("aws_instance", "aws_autoscaling_group")
# Resource types drawn as nodes; everything else (IAM, rules, routes, bucket settings, ...) shapes
# the edges and labels instead.
NODE_KINDS = {
    "aws_subnet": "network",
    "aws_internet_gateway": "network",
    "aws_nat_gateway": "network",
    "aws_vpc_endpoint": "network",
    "aws_flow_log": "observe",
    "aws_eip": "compute",
    "aws_lb": "compute",
    "aws_instance": "compute",
    "aws_autoscaling_group": "compute",
    "aws_launch_template": "compute",
    "aws_db_instance": "data",
    "aws_s3_bucket": "data",
    "aws_kms_key": "security",
    "aws_kms_replica_key": "security",
    "aws_secretsmanager_secret": "security",
    "aws_cloudwatch_log_group": "observe",
    "aws_cloudwatch_metric_alarm": "observe",
    "aws_cloudwatch_dashboard": "observe",
    "aws_sns_topic": "observe",
    "aws_cloudtrail": "observe",
    "aws_ssm_document": "observe",
    "aws_backup_plan": "backup",
    "aws_backup_vault": "backup",
}
# Node types that live inside a VPC (the rest are regional services).
IN_VPC = frozenset(
    {
        "aws_subnet",
        "aws_internet_gateway",
        "aws_nat_gateway",
        "aws_vpc_endpoint",
        "aws_flow_log",
        "aws_lb",
        "aws_instance",
        "aws_autoscaling_group",
        "aws_db_instance",
    }
)
KEY_TYPES = ("aws_kms_key", "aws_kms_replica_key")
IAM_LINK_TYPES = frozenset(
    {"aws_iam_role_policy", "aws_iam_role_policy_attachment", "aws_iam_policy_attachment", "aws_iam_policy"}
)

NODE_STYLE = {
    "external": 'shape=oval, fillcolor="#eeeeee"',
    "network": 'style="rounded,dashed,filled", fillcolor="#f2f7fc"',
    "compute": 'fillcolor="#fce4d6"',
    "data": 'shape=cylinder, style=filled, fillcolor="#ddebf7"',
    "security": 'fillcolor="#fff2cc"',
    "observe": 'fillcolor="#e2efda"',
    "backup": 'fillcolor="#ede2f6"',
}
EDGE_STYLE = {
    "traffic": 'color="#1f4e79", fontcolor="#1f4e79", penwidth=2',
    "access": 'color="#404040"',
    "logs": 'style=dashed, color="#548235", fontcolor="#548235"',
    "encrypts": 'style=dashed, color="#b8860b", fontcolor="#b8860b"',
    "control": 'style=dotted, color="#7030a0", fontcolor="#7030a0"',
    "placement": 'style=dotted, arrowhead=none, color="#a6a6a6"',
}


def port_label(low: int, high: int | None = None, protocol: str = "tcp") -> str:
    """``<name> <port>`` (the name from config/facts.py when the port has one), or ``tcp <low>-<high>``."""
    if high is None or high == low:
        name = PORT_NAMES.get(low, protocol)
        return f"{name} {low}"
    return f"{protocol} {low}-{high}"


@dataclass(frozen=True, order=True)
class Node:
    id: str
    label: str
    kind: str
    cluster: str  # "" for the top level


@dataclass(frozen=True, order=True)
class Edge:
    src: str
    dst: str
    kind: str
    label: str


@dataclass(frozen=True, order=True)
class Cluster:
    id: str
    label: str
    parent: str  # "" for the top level


@dataclass(frozen=True)
class Graph:
    title: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    clusters: tuple[Cluster, ...]

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.id == node_id)

    def ids_of(self, rtype: str) -> list[str]:
        # Resource nodes only: derived nodes (the RDS-managed secret) have a longer id.
        return [n.id for n in self.nodes if n.id.startswith(f"{rtype}.") and n.id.count(".") == 1]

    def edges_between(self, src: str, dst: str) -> list[Edge]:
        return [e for e in self.edges if e.src == src and e.dst == dst]

    def to_dot(self) -> str:
        lines = [
            f"digraph {_q(self.title)} {{",
            f"  graph [label={_q(self.title)}, labelloc=t, fontname=Helvetica, fontsize=12, rankdir=LR,"
            " compound=true, newrank=true, nodesep=0.3, ranksep=0.9];",
            '  node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=10];',
            "  edge [fontname=Helvetica, fontsize=9];",
        ]
        lines += self._cluster_lines("", "  ")
        for edge in self.edges:
            lines.append(f"  {_q(edge.src)} -> {_q(edge.dst)} [label={_q(edge.label)}, {EDGE_STYLE[edge.kind]}];")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _cluster_lines(self, parent: str, indent: str) -> list[str]:
        lines = [
            f"{indent}{_q(n.id)} [label={_q(n.label)}, {NODE_STYLE[n.kind]}];"
            for n in self.nodes
            if n.cluster == parent
        ]
        for cluster in (c for c in self.clusters if c.parent == parent):
            lines.append(f"{indent}subgraph {_q('cluster_' + cluster.id)} {{")
            lines.append(f'{indent}  label={_q(cluster.label)}; style="rounded"; color="#7f7f7f";')
            lines += self._cluster_lines(cluster.id, indent + "  ")
            lines.append(f"{indent}}}")
        return lines


def _q(text: str) -> str:
    """A DOT quoted string; newlines become DOT's centred line breaks."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _plain(body: Mapping[str, Any], key: str, default: str = "") -> str:
    value = body.get(key)
    if value is None or not is_plain(value) or isinstance(value, (dict, list)):
        return default
    return str(value).lower() if isinstance(value, bool) else str(value)


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


@dataclass(frozen=True)
class _Rule:
    """One allowed inbound or outbound flow of a security group, from any of Terraform's three rule styles."""

    group: Address
    low: int
    high: int
    protocol: str
    cidrs: tuple[str, ...]
    peer_groups: tuple[Address, ...]


@dataclass
class _Builder:
    """Collects nodes, clusters and edges from one stack; ``graph()`` freezes them sorted."""

    stack: Stack
    nodes: dict[str, Node] = field(default_factory=dict)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    # (src, dst, kind, label head) -> CIDRs that reach it (shown under the label)
    edges: dict[tuple[str, str, str, str], set[str]] = field(default_factory=lambda: defaultdict(set))

    # -- nodes and clusters -------------------------------------------------------------------------

    def region_cluster(self, address: Address) -> str:
        alias = self.stack.provider_alias(address)
        region = self.stack.provider_regions().get(alias)
        cluster_id = f"region:{region or alias or 'default'}"
        label = f"AWS {region}" if region else f"AWS (region of provider {alias or 'aws'})"
        self.clusters.setdefault(cluster_id, Cluster(cluster_id, label, ""))
        return cluster_id

    def vpc_of(self, address: Address, depth: int = 4) -> Address | None:
        """The VPC a resource sits in, following vpc_id / subnet / subnet group / template references."""
        if address.type == "aws_vpc":
            return address
        if depth == 0:
            return None
        for target in self.stack.targets(self.stack.body(address)):
            if target.data or target.type in KEY_TYPES or target.type.startswith("aws_iam"):
                continue
            if target.type in ("aws_vpc", "aws_subnet", "aws_db_subnet_group", "aws_launch_template", "aws_lb"):
                found = self.vpc_of(target, depth - 1)
                if found:
                    return found
        return None

    def cluster_of(self, address: Address) -> str:
        zone = self.zone_anchor(address)
        if zone is not None:
            return self.cluster_of(zone)
        region = self.region_cluster(address)
        vpc = self.vpc_of(address) if address.type in IN_VPC else None
        if vpc is None:
            return region
        vpc_id = vpc.stable
        cidr = _plain(self.stack.body(vpc), "cidr_block")
        self.clusters.setdefault(vpc_id, Cluster(vpc_id, f"VPC {cidr}".strip(), region))
        if address.type != "aws_subnet":
            return vpc_id
        az = self.stack.body(address).get("availability_zone", "")
        # ${element(<usable zones>, i)}: the i-th usable zone.
        index = re.search(r", (\d+)\)\}$", str(az))
        az_id = f"{vpc_id}/az-{index[1]}" if index else f"{vpc_id}/{az}"
        az_label = f"AZ {int(index[1]) + 1}" if index else f"AZ {az}"
        self.clusters.setdefault(az_id, Cluster(az_id, az_label, vpc_id))
        return az_id

    def zone_anchor(self, address: Address) -> Address | None:
        """The one subnet whose zone a zonal resource is drawn in: a NAT gateway's subnet, also for the
        Elastic IP the NAT gateway's traffic leaves from."""
        s = self.stack
        if address.type == "aws_eip":
            nats = [
                n for n, body in s.of_type("aws_nat_gateway").items() if address in s.targets(body.get("allocation_id"))
            ]
            return self.zone_anchor(nats[0]) if len(nats) == 1 else None
        if address.type != "aws_nat_gateway":
            return None
        subnets = s.targets(s.body(address).get("subnet_id"), "aws_subnet")
        return subnets[0] if len(subnets) == 1 else None

    def add(self, address: Address, label: str) -> None:
        self.nodes[address.stable] = Node(address.stable, label, NODE_KINDS[address.type], self.cluster_of(address))

    def edge(self, src: str, dst: str, kind: str, label: str, cidrs: Iterable[str] = ()) -> None:
        if src != dst and src in self.nodes and dst in self.nodes:
            self.edges[(src, dst, kind, label)].update(cidrs)

    def graph(self) -> Graph:
        env = self.stack.tag("Environment")
        title = f"Orthweb site {self.stack.name}" + (f" ({env})" if env else "")
        edges = []
        for (src, dst, kind, label), cidrs in self.edges.items():
            text = label + (f"\nfrom {', '.join(sorted(cidrs))}" if cidrs else "")
            edges.append(Edge(src, dst, kind, text))
        nodes, clusters = tuple(sorted(self.nodes.values())), tuple(sorted(self.clusters.values()))
        return Graph(title, nodes, tuple(sorted(edges)), clusters)

    # -- lookups ---------------------------------------------------------------------------------------

    def launched_by(self, template: Address) -> list[Address]:
        return [
            a
            for rtype in HOST_TYPES
            for a, body in self.stack.of_type(rtype).items()
            if template in self.stack.targets(body.get("launch_template", body.get("mixed_instances_policy")))
        ]

    def template_of(self, host: Address) -> Address | None:
        body = self.stack.body(host)
        spec = body.get("launch_template", body.get("mixed_instances_policy"))
        found = self.stack.targets(spec, "aws_launch_template")
        return found[0] if found else None

    def host_setting(self, host: Address, key: str) -> Any:
        """A setting of the host, from its own body or else its launch template's."""
        body = self.stack.body(host)
        if key in body:
            return body[key]
        template = self.template_of(host)
        return self.stack.body(template).get(key) if template else None

    def hosts(self) -> list[Address]:
        return [a for rtype in HOST_TYPES for a in self.stack.of_type(rtype)]

    def address_of(self, node_id: str) -> Address | None:
        """The resource a node stands for (None for the derived and external nodes)."""
        return next((a for a in self.stack.resources if a.stable == node_id), None)

    def subnets_of(self, node_id: str) -> list[Address]:
        """The subnets a node's network interfaces are in (a host's from its launch template)."""
        address = self.address_of(node_id)
        if address is None:
            return []
        return self.stack.targets([self.host_setting(address, k) for k in _SUBNET_KEYS + _LB_SUBNET_KEYS], "aws_subnet")

    def route_tables(self, subnet: Address) -> list[Address]:
        """The route tables a subnet uses: its explicit associations, else its VPC's main route table."""
        s = self.stack
        tables = [
            t
            for assoc in s.of_type("aws_route_table_association").values()
            if subnet in s.targets(assoc.get("subnet_id"))
            for t in s.targets(assoc.get("route_table_id"), "aws_route_table")
        ]
        if tables:
            return sorted(set(tables))
        vpc = self.vpc_of(subnet)
        return sorted(
            {
                t
                for assoc in s.of_type("aws_main_route_table_association").values()
                if vpc in s.targets(assoc.get("vpc_id"))
                for t in s.targets(assoc.get("route_table_id"), "aws_route_table")
            }
        )

    def routes(self, subnet: Address) -> list[Mapping[str, Any]]:
        """The routes of a subnet's route tables (``aws_route`` resources and inline ``route`` blocks)."""
        found: list[Mapping[str, Any]] = []
        for table in self.route_tables(subnet):
            found += [
                r
                for r in self.stack.of_type("aws_route").values()
                if table in self.stack.targets(r.get("route_table_id"))
            ]
            found += list(self.stack.body(table).get("route", []) or [])
        return found

    def default_route_targets(self, subnet: Address) -> list[Address]:
        """Where a subnet's IPv4 default route (0.0.0.0/0) sends traffic: gateways of any kind."""
        return sorted(
            {
                target
                for route in self.routes(subnet)
                if _plain(route, "destination_cidr_block", _plain(route, "cidr_block")) == "0.0.0.0/0"
                for key in _ROUTE_TARGET_KEYS
                for target in self.stack.targets(route.get(key))
            }
        )

    def node_ids_for(self, address: Address) -> list[str]:
        """The nodes standing for a resource: itself, or the hosts a launch template launches."""
        if address.type == "aws_launch_template":
            return [h.stable for h in self.launched_by(address)]
        return [address.stable] if address.stable in self.nodes else []


# -- labels -----------------------------------------------------------------------------------------------


def _host_label(b: _Builder, host: Address) -> str:
    body = b.stack.body(host)
    itype = _plain({"t": b.host_setting(host, "instance_type")}, "t", "instance type from a variable")
    if host.type == "aws_autoscaling_group":
        count = _plain(body, "desired_capacity", _plain(body, "min_size", "?"))
        return f"Auto Scaling group\n{count} x {itype}"
    root = body.get("root_block_device") or {}
    if not root:
        template = b.template_of(host)
        mappings = b.stack.body(template).get("block_device_mappings", []) if template else []
        root = mappings[0].get("ebs", {}) if mappings else {}
    disk = f"\n{_plain(root, 'volume_size', '?')} GiB {_plain(root, 'volume_type', 'EBS')}" if root else ""
    encrypted = " (encrypted)" if _truthy(root.get("encrypted")) else ""
    return f"EC2 host\n{itype}{disk}{encrypted}"


def _db_label(body: Mapping[str, Any]) -> str:
    engine = f"RDS {_plain(body, 'engine', 'database')} {_plain(body, 'engine_version')}".strip()
    size = f"{_plain(body, 'instance_class', '?')}, {_plain(body, 'allocated_storage', '?')} GiB"
    storage = _plain(body, "storage_type")
    az = "Multi-AZ" if _truthy(body.get("multi_az")) else "Single-AZ"
    return f"{engine}\n{size} {storage}".strip() + f"\n{az}"


def _bucket_label(b: _Builder, bucket: Address) -> str:
    body = b.stack.body(bucket)
    name = _plain(body, "bucket") or (_plain(body, "bucket_prefix") + "*" if _plain(body, "bucket_prefix") else "")
    features = []
    for rtype, word in (
        ("aws_s3_bucket_versioning", "versioned"),
        ("aws_s3_bucket_object_lock_configuration", "Object Lock"),
        ("aws_s3_bucket_replication_configuration", "replicated"),
    ):
        if any(bucket in b.stack.targets(cfg.get("bucket")) for cfg in b.stack.of_type(rtype).values()):
            features.append(word)
    return "\n".join(x for x in ("S3 bucket", name or bucket.stable.split(".")[1], ", ".join(features)) if x)


def _kms_label(b: _Builder, key: Address) -> str:
    aliases = sorted(
        _plain(body, "name")
        for body in b.stack.of_type("aws_kms_alias").values()
        if key in b.stack.targets(body.get("target_key_id"))
    )
    rotation = "rotation on" if _truthy(b.stack.body(key).get("enable_key_rotation")) else ""
    kind = "KMS replica key" if key.type == "aws_kms_replica_key" else "KMS key"
    return "\n".join(x for x in (kind, ", ".join(a for a in aliases if a), rotation) if x)


def _simple_label(b: _Builder, address: Address) -> str:
    body = b.stack.body(address)
    short = address.stable.split(".", 1)[1]
    titles: dict[str, tuple[str, str]] = {
        "aws_internet_gateway": ("Internet gateway", ""),
        "aws_nat_gateway": ("NAT gateway", ""),
        "aws_eip": ("Elastic IP", ""),
        "aws_launch_template": ("Launch template", "name"),
        "aws_secretsmanager_secret": ("Secrets Manager secret", "name"),
        "aws_cloudwatch_log_group": ("CloudWatch log group", "name"),
        "aws_cloudwatch_metric_alarm": ("CloudWatch alarm", "alarm_name"),
        "aws_cloudwatch_dashboard": ("CloudWatch dashboard", "dashboard_name"),
        "aws_sns_topic": ("SNS topic", "name"),
        "aws_ssm_document": ("SSM document", "name"),
        "aws_backup_plan": ("AWS Backup plan", "name"),
        "aws_backup_vault": ("AWS Backup vault", "name"),
        "aws_flow_log": ("VPC flow log", "traffic_type"),
    }
    title, key = titles[address.type]
    detail = _plain(body, key, short) if key else ""
    if address.type == "aws_cloudwatch_log_group" and _plain(body, "retention_in_days"):
        detail += f"\nkept {_plain(body, 'retention_in_days')} days"
    if address.type == "aws_sns_topic":
        detail += _subscriptions(b, address)
    return f"{title}\n{detail}".strip()


def _subscriptions(b: _Builder, topic: Address) -> str:
    protocols = sorted(
        _plain(s, "protocol", "?")
        for s in b.stack.of_type("aws_sns_topic_subscription").values()
        if topic in b.stack.targets(s.get("topic_arn"))
    )
    return f"\nsubscriptions: {', '.join(protocols)}" if protocols else ""


def _labels(b: _Builder, address: Address) -> str:
    body = b.stack.body(address)
    if address.type in HOST_TYPES:
        return _host_label(b, address)
    if address.type == "aws_db_instance":
        return _db_label(body)
    if address.type == "aws_s3_bucket":
        return _bucket_label(b, address)
    if address.type in KEY_TYPES:
        return _kms_label(b, address)
    if address.type == "aws_subnet":
        return f"{_subnet_tier(b, address)} subnet\n{_plain(body, 'cidr_block')}".strip()
    if address.type == "aws_vpc_endpoint":
        service = _plain(body, "service_name") or str(body.get("service_name", ""))
        kind = _plain(body, "vpc_endpoint_type", "Gateway")
        return f"VPC endpoint ({kind})\n{service.rsplit('.', 1)[-1]}"
    if address.type == "aws_lb":
        kind = {"network": "Network", "gateway": "Gateway"}.get(_plain(body, "load_balancer_type"), "Application")
        facing = "internal" if _truthy(body.get("internal")) else "internet-facing"
        return f"{kind} Load Balancer\n{facing}"
    if address.type == "aws_cloudtrail":
        data_events = " + S3 data events" if "data_resource" in str(body.get("event_selector", "")) else ""
        return f"CloudTrail\n{_plain(body, 'name', address.stable)}\nmanagement events{data_events}"
    return _simple_label(b, address)


def _subnet_tier(b: _Builder, subnet: Address) -> str:
    """public if its route table sends 0.0.0.0/0 to an internet gateway, else private."""
    routes = b.routes(subnet)
    return "public" if any(b.stack.targets(r.get("gateway_id"), "aws_internet_gateway") for r in routes) else "private"


# -- edges --------------------------------------------------------------------------------------------------


def _rules(b: _Builder, direction: str) -> list[_Rule]:
    """Security group rules of one direction ("ingress"/"egress") in all three Terraform styles."""
    found = []
    for body in b.stack.of_type(f"aws_vpc_security_group_{direction}_rule").values():
        cidrs = tuple(_plain(body, k) for k in ("cidr_ipv4", "cidr_ipv6") if _plain(body, k))
        peers = tuple(b.stack.targets(body.get("referenced_security_group_id"), "aws_security_group"))
        found += [_rule(b, body, group, cidrs, peers) for group in b.stack.targets(body.get("security_group_id"))]
    for body in b.stack.of_type("aws_security_group_rule").values():
        if body.get("type") == direction:
            cidrs = tuple(str(c) for c in body.get("cidr_blocks", []) or [])
            peers = tuple(b.stack.targets(body.get("source_security_group_id"), "aws_security_group"))
            found += [_rule(b, body, group, cidrs, peers) for group in b.stack.targets(body.get("security_group_id"))]
    for group, body in b.stack.of_type("aws_security_group").items():
        for inline in body.get(direction, []) or []:
            cidrs = tuple(str(c) for c in inline.get("cidr_blocks", []) or [])
            peers = tuple(b.stack.targets(inline.get("security_groups"), "aws_security_group"))
            found.append(_rule(b, inline, group, cidrs, peers))
    return [r for r in found if r.group.type == "aws_security_group"]


def _rule(
    b: _Builder, body: Mapping[str, Any], group: Address, cidrs: tuple[str, ...], peers: tuple[Address, ...]
) -> _Rule:
    protocol = _plain(body, "ip_protocol", _plain(body, "protocol", "tcp"))
    low, high = body.get("from_port", -1), body.get("to_port", -1)
    if not isinstance(low, int) or not isinstance(high, int):
        low = high = -1
    return _Rule(group, low, high, "all" if protocol == "-1" else protocol, cidrs, peers)


def _sg_owners(b: _Builder) -> dict[Address, list[str]]:
    """Security group -> the nodes it is attached to (a template's groups belong to its hosts)."""
    owners: dict[Address, set[str]] = defaultdict(set)
    for address, body in b.stack.resources.items():
        if address.type not in NODE_KINDS or address.type == "aws_subnet":
            continue
        for group in b.stack.targets(body, "aws_security_group"):
            owners[group].update(b.node_ids_for(address))
    return {g: sorted(ids) for g, ids in owners.items()}


def _inside(b: _Builder, cidr: str) -> bool:
    """Whether a CIDR lies inside one of the stack's VPCs (traffic from within, not from clients)."""
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return "aws_vpc." in cidr  # a reference to a VPC's cidr_block
    for vpc in b.stack.of_type("aws_vpc").values():
        try:
            block = ipaddress.ip_network(_plain(vpc, "cidr_block"), strict=False)
        except ValueError:
            continue
        if network.version == block.version and network.subnet_of(block):  # type: ignore[arg-type]
            return True
    return False


def _elastic_ips(b: _Builder) -> dict[str, list[str]]:
    """Node -> the Elastic IPs clients reach it on (association, instance, each NLB subnet mapping)."""
    attached: dict[str, set[str]] = defaultdict(set)
    for body in b.stack.of_type("aws_eip_association").values():
        for eip in b.stack.targets(body.get("allocation_id"), "aws_eip"):
            for target in b.stack.targets([body.get("instance_id"), body.get("network_interface_id")]):
                attached[target.stable].add(eip.stable)
    for eip, body in b.stack.of_type("aws_eip").items():
        for target in b.stack.targets(body.get("instance"), "aws_instance"):
            attached[target.stable].add(eip.stable)
    for balancer, body in b.stack.of_type("aws_lb").items():
        # One address per zone: every mapping's Elastic IP is a front of the balancer.
        attached[balancer.stable].update(e.stable for e in b.stack.targets(body.get("subnet_mapping"), "aws_eip"))
    return {node: sorted(eips) for node, eips in attached.items() if eips}


def _fronts(b: _Builder) -> dict[str, list[str]]:
    """Node -> what clients connect to for it: its Elastic IPs, or its load balancer's fronts."""
    front = _elastic_ips(b)
    for lb_id, member, _port in _lb_targets(b):
        front[member] = front.get(lb_id, [lb_id])
    return front


def _exits(b: _Builder, node_id: str) -> list[str]:
    """Where a node's traffic to the Internet leaves the VPC through a drawn hop: the NAT gateways its
    subnets' default routes name; ``INTERNET`` itself for a subnet routed otherwise or a node whose
    subnets are not known."""
    hops = set()
    for subnet in b.subnets_of(node_id):
        nats = [t.stable for t in b.default_route_targets(subnet) if t.type == "aws_nat_gateway"]
        if nats:
            hops.update(nats)
        else:
            hops.add(INTERNET)
    return sorted(hops) or [INTERNET]


def _lb_targets(b: _Builder) -> list[tuple[str, str, int | None]]:
    """(load balancer, target node, target port) through listeners and target groups."""
    groups_of_lb: dict[Address, set[Address]] = defaultdict(set)
    for body in b.stack.of_type("aws_lb_listener").values():
        for lb in b.stack.targets(body.get("load_balancer_arn"), "aws_lb"):
            groups_of_lb[lb].update(b.stack.targets(body.get("default_action"), "aws_lb_target_group"))
    members: dict[Address, set[str]] = defaultdict(set)
    for body in b.stack.of_type("aws_lb_target_group_attachment").values():
        for group in b.stack.targets(body.get("target_group_arn"), "aws_lb_target_group"):
            members[group].update(t.stable for t in b.stack.targets(body.get("target_id")))
    for asg, body in b.stack.of_type("aws_autoscaling_group").items():
        for group in b.stack.targets(body.get("target_group_arns"), "aws_lb_target_group"):
            members[group].add(asg.stable)
    found = set()
    for lb, groups in groups_of_lb.items():
        for group in groups:
            port = b.stack.body(group).get("port")
            for member in members[group]:
                found.add((lb.stable, member, port if isinstance(port, int) else None))
    return sorted(found, key=str)


def _rule_label(rule: _Rule) -> str:
    return port_label(rule.low, rule.high, rule.protocol) if rule.low >= 0 else f"{rule.protocol} all ports"


def _traffic_edges(b: _Builder) -> None:
    """Who may connect to what, from the security group rules."""
    owners, front = _sg_owners(b), _fronts(b)
    for rule in _rules(b, "ingress"):
        outside = [c for c in rule.cidrs if not _inside(b, c)]
        # Sources inside the VPC are the hosts (the only workload in it); peers are other groups' nodes.
        sources = [h.stable for h in b.hosts()] if len(outside) < len(rule.cidrs) else []
        sources += [node for peer in rule.peer_groups for node in owners.get(peer, [])]
        for owner in owners.get(rule.group, []):
            for entry in front.get(owner, [owner]) if outside else []:
                b.edge(CLIENTS, entry, "traffic", _rule_label(rule), outside)
            for source in sources:
                b.edge(source, owner, "traffic", _rule_label(rule))
    for rule in _rules(b, "egress"):
        if any(not _inside(b, c) for c in rule.cidrs):
            for owner in owners.get(rule.group, []):
                for hop in _exits(b, owner):
                    b.edge(owner, hop, "traffic", _rule_label(rule))
                    b.edge(hop, INTERNET, "traffic", _rule_label(rule))
    _front_edges(b, front)


def _front_edges(b: _Builder, front: Mapping[str, list[str]]) -> None:
    """Elastic IP -> what it is attached to; clients -> listeners; load balancer -> targets."""
    for target, eips in _elastic_ips(b).items():
        for eip in eips:
            b.edge(eip, target, "traffic", "Elastic IP")
    for lb, target, port in _lb_targets(b):
        b.edge(lb, target, "traffic", port_label(port) if port else "targets")
    for body in b.stack.of_type("aws_lb_listener").values():
        listener_port = body.get("port")
        if not isinstance(listener_port, int):
            continue
        for balancer in b.stack.targets(body.get("load_balancer_arn"), "aws_lb"):
            for entry in front.get(balancer.stable, [balancer.stable]):
                b.edge(CLIENTS, entry, "traffic", port_label(listener_port))


def _iam_reach(b: _Builder, host: Address) -> list[tuple[Address, str]]:
    """(resource, attribute) named by the host's instance profile policies: buckets, secrets, logs, ..."""
    profiles = b.stack.targets(b.host_setting(host, "iam_instance_profile"), "aws_iam_instance_profile")
    roles = {r for p in profiles for r in b.stack.targets(b.stack.body(p), "aws_iam_role")}
    while True:
        policies = [
            a
            for a, body in b.stack.resources.items()
            if a.type in IAM_LINK_TYPES and roles & set(b.stack.targets(body, "aws_iam_role"))
        ]
        # Inline policies name policy documents (data sources), attachments name managed policies.
        seen, todo = set(policies), list(policies)
        while todo:
            for target in b.stack.targets(b.stack.body(todo.pop())):
                if target not in seen and target.type in ("aws_iam_policy_document", "aws_iam_policy"):
                    seen.add(target)
                    todo.append(target)
        refs = {(r.target, r.attribute) for d in seen for r in b.stack.references(b.stack.body(d))}
        # A role the host may assume (Orthanc's, whose credentials the host hands to Orthanc) reaches
        # what that role reaches.
        assumed = {t for t, _ in refs if t.type == "aws_iam_role" and not t.data} - roles
        if not assumed:
            return sorted((t, attr) for t, attr in refs if not t.data and not t.type.startswith("aws_iam"))
        roles |= assumed


_HOST_ACCESS = {
    "aws_secretsmanager_secret": ("access", "reads / writes"),
    "aws_cloudwatch_log_group": ("logs", "container logs"),
    "aws_sns_topic": ("access", "publishes"),
}


def _host_edges(b: _Builder) -> None:
    """The host's data paths (S3 through the gateway endpoint, secrets, logs), template and subnet."""
    for host in b.hosts():
        vpc = b.vpc_of(host)
        gateways = [
            e.stable
            for e, body in b.stack.of_type("aws_vpc_endpoint").items()
            if _plain(body, "vpc_endpoint_type") == "Gateway"
            and str(body.get("service_name", "")).endswith(".s3")
            and b.vpc_of(e) == vpc
        ]
        for target, attribute in _iam_reach(b, host):
            if target.type == "aws_db_instance" and "master_user_secret" in attribute:
                b.edge(host.stable, _managed_secret_id(target), "access", "reads")
            elif target.type == "aws_s3_bucket":
                for gateway in gateways:
                    b.edge(host.stable, gateway, "access", f"S3 API ({port_label(facts.HTTPS_PORT)})")
                    b.edge(gateway, target.stable, "access", "objects")
                if not gateways:
                    b.edge(host.stable, target.stable, "access", "objects")
            elif target.type in _HOST_ACCESS:
                b.edge(host.stable, target.stable, *_HOST_ACCESS[target.type])
        if template := b.template_of(host):
            b.edge(template.stable, host.stable, "control", "launches")
        for subnet in b.stack.targets([b.host_setting(host, k) for k in _SUBNET_KEYS], "aws_subnet"):
            b.edge(host.stable, subnet.stable, "placement", "")


_SUBNET_KEYS = ("subnet_id", "network_interfaces", "vpc_zone_identifier")
_LB_SUBNET_KEYS = ("subnets", "subnet_mapping")
# The attributes of a route (resource or inline block) that name where the traffic goes.
_ROUTE_TARGET_KEYS = (
    "gateway_id",
    "nat_gateway_id",
    "transit_gateway_id",
    "vpc_endpoint_id",
    "network_interface_id",
    "egress_only_gateway_id",
    "vpc_peering_connection_id",
)


def _managed_secret_id(db: Address) -> str:
    return f"{db.stable}.master_user_secret"


def _kms_refs(node: Any, key: str = "") -> list[tuple[str, Any]]:
    """(attribute name, value) for every attribute whose name mentions kms, at any depth."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            found += [(k, v)] if "kms" in k and isinstance(v, str) else _kms_refs(v, k)
    elif isinstance(node, list):
        for item in node:
            found += _kms_refs(item, key)
    return found


def _encrypted_nodes(b: _Builder, address: Address, attribute: str) -> list[tuple[str, str]]:
    """(node, label) encrypted by the key named in ``attribute`` of ``address``."""
    if address.type == "aws_db_instance" and attribute.startswith("master_user_secret"):
        return [(_managed_secret_id(address), "encrypts")]
    if address.type == "aws_launch_template" or address.type in HOST_TYPES:
        ids = b.node_ids_for(address)
        return [(i, "encrypts EBS") for i in ids]
    if address.type == "aws_s3_bucket_replication_configuration":
        # replica_kms_key_id: the key of the replicas, in the rules' destination buckets (not the source).
        return [(t.stable, "encrypts") for t in b.stack.targets(b.stack.body(address).get("rule"), "aws_s3_bucket")]
    if address.type.startswith("aws_s3_bucket_"):
        return [(t.stable, "encrypts") for t in b.stack.targets(b.stack.body(address).get("bucket"), "aws_s3_bucket")]
    return [(i, "encrypts") for i in b.node_ids_for(address)]


def _kms_edges(b: _Builder) -> None:
    for address, body in b.stack.resources.items():
        if address.type in KEY_TYPES or address.type.startswith(("aws_iam", "aws_kms")):
            continue
        for attribute, value in _kms_refs(body):
            for key in (t for t in b.stack.targets(value) if t.type in KEY_TYPES):
                for node, label in _encrypted_nodes(b, address, attribute):
                    b.edge(key.stable, node, "encrypts", label)
    for replica, body in b.stack.of_type("aws_kms_replica_key").items():
        for primary in b.stack.targets(body.get("primary_key_arn"), "aws_kms_key"):
            b.edge(primary.stable, replica.stable, "control", "replica")


# A resource of the first type whose attribute names a resource of the second type: an edge from it
# to that resource (from that resource to it when reversed).
_LINKS: tuple[tuple[str, str, str, str, str, bool], ...] = (
    ("aws_flow_log", "log_destination", "aws_cloudwatch_log_group", "logs", "flow records", False),
    ("aws_flow_log", "log_destination", "aws_s3_bucket", "logs", "flow records", False),
    ("aws_flow_log", "log_group_name", "aws_cloudwatch_log_group", "logs", "flow records", False),
    ("aws_cloudtrail", "s3_bucket_name", "aws_s3_bucket", "logs", "trail files", False),
    ("aws_cloudtrail", "cloud_watch_logs_group_arn", "aws_cloudwatch_log_group", "logs", "events", False),
    ("aws_cloudtrail", "sns_topic_name", "aws_sns_topic", "logs", "delivery notices", False),
    ("aws_cloudtrail", "event_selector", "aws_s3_bucket", "logs", "data events", True),
    ("aws_cloudtrail", "advanced_event_selector", "aws_s3_bucket", "logs", "data events", True),
    ("aws_ssm_document", "content", "aws_cloudwatch_log_group", "logs", "session logs", False),
    ("aws_ssm_document", "content", "aws_s3_bucket", "logs", "session logs", False),
    ("aws_backup_plan", "rule", "aws_backup_vault", "control", "recovery points", False),
    ("aws_cloudwatch_metric_alarm", "alarm_actions", "aws_sns_topic", "control", "notifies", False),
    ("aws_cloudwatch_metric_alarm", "ok_actions", "aws_sns_topic", "control", "notifies", False),
    ("aws_kms_replica_key", "primary_key_arn", "aws_kms_key", "control", "replica", True),
    ("aws_vpc_endpoint", "subnet_ids", "aws_subnet", "placement", "", False),
    ("aws_nat_gateway", "subnet_id", "aws_subnet", "placement", "", False),
    ("aws_nat_gateway", "allocation_id", "aws_eip", "placement", "outbound address", False),
)
# A joining resource (first) names a source through one attribute and targets through another
# (any drawn type when the target type is empty).
_JOINS: tuple[tuple[str, str, str, str, str, str, str], ...] = (
    ("aws_s3_bucket_logging", "bucket", "aws_s3_bucket", "target_bucket", "aws_s3_bucket", "logs", "access logs"),
    (
        "aws_s3_bucket_replication_configuration",
        "bucket",
        "aws_s3_bucket",
        "rule",
        "aws_s3_bucket",
        "control",
        "replication",
    ),
    ("aws_backup_selection", "plan_id", "aws_backup_plan", "resources", "", "control", "backs up"),
    ("aws_cloudwatch_metric_alarm", "alarm_name", "", "dimensions", "", "control", "watches"),
    ("aws_cloudwatch_metric_alarm", "alarm_name", "", "metric_query", "", "control", "watches"),
    ("aws_db_instance", "identifier", "", "db_subnet_group_name", "aws_db_subnet_group", "placement", ""),
)


def _link_edges(b: _Builder) -> None:
    s = b.stack
    for rtype, attribute, target_type, kind, label, reverse in _LINKS:
        for address, body in s.of_type(rtype).items():
            for target in s.targets(body.get(attribute), target_type):
                ends = (target.stable, address.stable) if reverse else (address.stable, target.stable)
                b.edge(*ends, kind, label)
    for rtype, src_attr, src_type, dst_attr, dst_type, kind, label in _JOINS:
        for address, body in s.of_type(rtype).items():
            # An empty source type means the joining resource is itself the source.
            sources = s.targets(body.get(src_attr), src_type) if src_type else [address]
            for target in s.targets(body.get(dst_attr), dst_type or None):
                for src in sources:
                    for node in _drawn(b, target):
                        b.edge(src.stable, node, kind, label)


def _drawn(b: _Builder, address: Address) -> list[str]:
    """The nodes for ``address``; a DB subnet group stands for its subnets."""
    if address.type == "aws_db_subnet_group":
        return [t.stable for t in b.stack.targets(b.stack.body(address).get("subnet_ids"), "aws_subnet")]
    return b.node_ids_for(address)


def _special_edges(b: _Builder) -> None:
    """Edges that follow a naming rule or a route rather than one reference."""
    s = b.stack
    for db, body in s.of_type("aws_db_instance").items():
        # RDS writes its log exports to /aws/rds/instance/<identifier>/<log type>.
        prefix = f"/aws/rds/instance/{_plain(body, 'identifier', '?')}/"
        for group, group_body in s.of_type("aws_cloudwatch_log_group").items():
            if _plain(group_body, "name").startswith(prefix):
                b.edge(db.stable, group.stable, "logs", "log export")
    for route in s.of_type("aws_route").values():
        tables = set(s.targets(route.get("route_table_id")))
        for gateway in s.targets(route.get("gateway_id"), "aws_internet_gateway"):
            for assoc in s.of_type("aws_route_table_association").values():
                if tables & set(s.targets(assoc.get("route_table_id"))):
                    for subnet in s.targets(assoc.get("subnet_id"), "aws_subnet"):
                        b.edge(subnet.stable, gateway.stable, "placement", "")


def build(stack: Stack) -> Graph:
    """The architecture graph of one synthesized stack."""
    b = _Builder(stack)
    for address in stack.resources:
        if address.type in NODE_KINDS:
            b.add(address, _labels(b, address))
    for db, body in stack.of_type("aws_db_instance").items():
        if _truthy(body.get("manage_master_user_password")):
            node_id = _managed_secret_id(db)
            label = "Secrets Manager secret\nRDS master password\n(managed by RDS)"
            b.nodes[node_id] = Node(node_id, label, "security", b.region_cluster(db))
    b.nodes[CLIENTS] = Node(CLIENTS, "Clients\nweb browsers, modalities, PACS", "external", "")
    b.nodes[INTERNET] = Node(INTERNET, "Internet\nAWS APIs, image registries, packages", "external", "")
    _traffic_edges(b)
    _host_edges(b)
    _kms_edges(b)
    _link_edges(b)
    _special_edges(b)
    if not any(e[1] == INTERNET for e in b.edges):
        del b.nodes[INTERNET]
    return b.graph()


def dot_for(data: Mapping[str, Any]) -> str:
    return build(Stack.from_json(data)).to_dot()


def render_svg(dot_text: str, out: Path) -> None:
    """Render with Graphviz's ``dot``; raises FileNotFoundError when graphviz is not installed."""
    program = shutil.which("dot")
    if not program:
        raise FileNotFoundError("dot (Debian package graphviz) is not on PATH")
    subprocess.run([program, "-Tsvg", "-o", str(out)], input=dot_text, text=True, check=True)


def svg_text(dot_text: str) -> str:
    """The SVG of ``dot_text`` (rendered in a scratch folder)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "graph.svg"
        render_svg(dot_text, out)
        return out.read_text()


def write_docs(svg: bool = True) -> list[Path]:
    """Synthesize the reference profiles and write docs/diagrams/<profile>.dot (and .svg)."""
    from tools.maint.snapshot import synthesize

    DIAGRAMS.mkdir(parents=True, exist_ok=True)
    written = []
    for profile in DOC_PROFILES:
        text = dot_for(json.loads(synthesize(profile)))
        path = DIAGRAMS / f"{profile}.dot"
        path.write_text(text)
        written.append(path)
        if svg:
            render_svg(text, path.with_suffix(".svg"))
            written.append(path.with_suffix(".svg"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.maint.diagram", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", type=Path, help="a synthesized cdk.tf.json")
    parser.add_argument("--dot", type=Path, help="write the Graphviz DOT text here ('-' for stdout)")
    parser.add_argument("--svg", type=Path, help="also render an SVG here with dot (package graphviz)")
    parser.add_argument("--docs", action="store_true", help="refresh docs/diagrams for the reference profiles")
    parser.add_argument("--no-svg", action="store_true", help="with --docs: write the DOT files only")
    args = parser.parse_args(argv)
    try:
        if args.docs:
            for path in write_docs(svg=not args.no_svg):
                print(f"wrote {path.relative_to(ROOT)}")
            return 0
        if not args.source or not (args.dot or args.svg):
            parser.print_usage(sys.stderr)
            print("diagram: give a cdk.tf.json and --dot and/or --svg, or --docs", file=sys.stderr)
            return EXIT_USAGE
        text = build(Stack.load(args.source)).to_dot()
        if args.dot and str(args.dot) == "-":
            sys.stdout.write(text)
        elif args.dot:
            args.dot.write_text(text)
        if args.svg:
            render_svg(text, args.svg)
    except TfJsonError as exc:
        print(f"diagram: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as exc:
        print(f"diagram: {exc}: apt-get install graphviz (or --no-svg with --docs)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
