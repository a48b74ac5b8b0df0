"""The architecture diagram (tools/maint/diagram.py): drawn from the synthesized stack, committed in
docs/diagrams for the reference profiles and current, with the traffic paths the site depends on."""

from __future__ import annotations

import copy
import html
import json
import re
import subprocess

import pytest

from config.facts import DICOM_TLS_PORT, HTTPS_PORT, POSTGRES_PORT
from tests.conftest import PROFILES
from tools.maint import diagram, snapshot
from tools.maint.diagram import CLIENTS, DIAGRAMS, DOC_PROFILES, Graph, build, dot_for, port_label
from tools.ops.tfjson import Stack, TfJsonError, stable_name
from tools.profiles import SCALED

HTTPS = port_label(HTTPS_PORT)
DICOM = port_label(DICOM_TLS_PORT)
POSTGRES = port_label(POSTGRES_PORT)


def graph_of(data) -> Graph:
    return build(Stack.from_json(data))


def one(g: Graph, rtype: str, fragment: str = "") -> str:
    found = [i for i in g.ids_of(rtype) if fragment in i]
    assert len(found) == 1, f"expected one {rtype} node matching {fragment!r}: {g.ids_of(rtype)}"
    return found[0]


def heads(g: Graph, src: str, dst: str) -> set[str]:
    """The first line of each edge's label (the port or the action, without the CIDRs)."""
    return {e.label.split("\n")[0] for e in g.edges_between(src, dst)}


def dot_node_ids(text: str) -> set[str]:
    return set(re.findall(r'^\s+"((?:[^"\\]|\\.)*)" \[label=', text, re.M))


def svg_node_ids(text: str) -> set[str]:
    return {html.unescape(t) for t in re.findall(r'<g id="node\d+" class="node">\s*<title>(.*?)</title>', text)}


# -- the committed diagrams are current ----------------------------------------------------------------


@pytest.mark.parametrize("profile", DOC_PROFILES)
def test_committed_diagram_is_what_the_stack_gives(synth_profile, profile):
    committed = (DIAGRAMS / f"{profile}.dot").read_text()
    assert dot_for(synth_profile(profile).data) == committed, (
        f"docs/diagrams/{profile}.dot is stale: run python -m tools.maint.diagram --docs"
    )


def test_the_diagram_profiles_are_the_test_profiles():
    # --docs synthesizes snapshot.PROFILES; the comparison above uses conftest's: the same configs.
    for profile in DOC_PROFILES:
        assert snapshot.PROFILES[profile] == PROFILES[profile]


def test_a_changed_stack_gives_a_different_diagram(default_stack):
    # Negative control for the currency test: remove one resource and the graph differs.
    data = copy.deepcopy(default_stack.data)
    gateway = one(graph_of(data), "aws_vpc_endpoint", "s3")
    del data["resource"]["aws_vpc_endpoint"]
    text = dot_for(data)
    assert text != (DIAGRAMS / "default.dot").read_text()
    assert gateway not in dot_node_ids(text)
    g = graph_of(data)
    # Without the gateway endpoint the host reaches the bucket directly.
    assert heads(g, one(g, "aws_instance"), one(g, "aws_s3_bucket", "dicom")) == {"objects"}


def test_prod_and_default_diagrams_differ_where_the_stacks_differ(default_stack, prod_stack):
    dev, prod = graph_of(default_stack.data), graph_of(prod_stack.data)
    db = one(dev, "aws_db_instance")
    assert "Single-AZ" in dev.node(db).label and "Multi-AZ" in prod.node(db).label
    # Prod replicates the DICOM bucket (the replica, its log bucket and key, and the failure alarm)
    # and keeps its audit trail (the trail, its topic and log group) and owns the account's Session
    # Manager preferences.
    assert {n.id for n in prod.nodes} - {n.id for n in dev.nodes} == {
        "aws_s3_bucket.replica_bucket",
        "aws_s3_bucket.replica_log_bucket",
        "aws_kms_key.replica_key",
        "aws_cloudwatch_metric_alarm.monitoring_replication-failed",
        "aws_cloudtrail.trail",
        "aws_sns_topic.trail_topic",
        "aws_cloudwatch_log_group.trail_logs",
        "aws_ssm_document.access_session-preferences",
    }
    assert {n.id for n in dev.nodes} <= {n.id for n in prod.nodes}


@pytest.mark.parametrize("profile", DOC_PROFILES)
def test_committed_svg_was_rendered_from_the_committed_dot(profile):
    dot_ids = dot_node_ids((DIAGRAMS / f"{profile}.dot").read_text())
    svg_ids = svg_node_ids((DIAGRAMS / f"{profile}.svg").read_text())
    assert dot_ids and svg_ids == dot_ids, "rerun python -m tools.maint.diagram --docs (with graphviz)"


def test_the_svg_check_can_fail():
    text = (DIAGRAMS / "default.dot").read_text()
    extra = text.replace("{\n", '{\n  "aws_s3_bucket.extra" [label="x"];\n', 1)
    assert dot_node_ids(extra) == dot_node_ids(text) | {"aws_s3_bucket.extra"}
    assert svg_node_ids((DIAGRAMS / "default.svg").read_text()) != dot_node_ids(extra)


# -- the paths ----------------------------------------------------------------------------------------------


def test_clients_reach_the_elastic_ip_on_https_and_dicom_tls(default_stack):
    g = graph_of(default_stack.data)
    eip, host = one(g, "aws_eip"), one(g, "aws_instance")
    assert heads(g, CLIENTS, eip) == {HTTPS, DICOM}
    assert all(e.label.endswith("from 0.0.0.0/0") for e in g.edges_between(CLIENTS, eip))
    assert heads(g, eip, host) == {"Elastic IP"}
    assert not g.edges_between(CLIENTS, host), "clients reach the host through its Elastic IP"
    assert HTTPS == f"HTTPS {HTTPS_PORT}" and DICOM == f"DICOM TLS {DICOM_TLS_PORT}"


def test_host_reaches_database_and_dicom_bucket_through_the_gateway(default_stack):
    g = graph_of(default_stack.data)
    host, db = one(g, "aws_instance"), one(g, "aws_db_instance")
    gateway, dicom = one(g, "aws_vpc_endpoint", "s3"), one(g, "aws_s3_bucket", "dicom")
    assert heads(g, host, db) == {POSTGRES}
    assert heads(g, host, gateway) == {f"S3 API ({HTTPS})"}
    assert heads(g, gateway, dicom) == {"objects"}
    # The log bucket is written by S3 logging, not by the host.
    logs = one(g, "aws_s3_bucket", "log")
    assert not g.edges_between(gateway, logs)
    assert heads(g, dicom, logs) == {"access logs"}
    assert heads(g, host, f"{db}.master_user_secret") == {"reads"}


def test_the_site_key_encrypts_data_at_rest(default_stack):
    g = graph_of(default_stack.data)
    key = one(g, "aws_kms_key", "site")
    encrypted = {e.dst for e in g.edges if e.src == key and e.kind == "encrypts"}
    expected = {
        one(g, "aws_s3_bucket", "dicom"),
        one(g, "aws_s3_bucket", "config"),
        one(g, "aws_db_instance"),
        f"{one(g, 'aws_db_instance')}.master_user_secret",
        *g.ids_of("aws_secretsmanager_secret"),
        *g.ids_of("aws_cloudwatch_log_group"),
        *g.ids_of("aws_sns_topic"),
    }
    assert encrypted == expected | {one(g, "aws_instance")}
    assert heads(g, key, one(g, "aws_instance")) == {"encrypts EBS"}


def test_the_paths_come_from_the_rules(default_stack):
    # Negative control: drop the DICOM ingress rule and the database rule, and those edges go.
    data = copy.deepcopy(default_stack.data)
    rules = data["resource"]["aws_vpc_security_group_ingress_rule"]
    for name in [k for k, v in rules.items() if v["from_port"] in (DICOM_TLS_PORT, POSTGRES_PORT)]:
        del rules[name]
    g = graph_of(data)
    assert heads(g, CLIENTS, one(g, "aws_eip")) == {HTTPS}
    assert not g.edges_between(one(g, "aws_instance"), one(g, "aws_db_instance"))


def test_network_nodes_per_availability_zone(synth_profile):
    g = graph_of(synth_profile("az3").data)
    subnets = g.ids_of("aws_subnet")
    assert len(subnets) == 6
    tiers = sorted(g.node(s).label.split()[0] for s in subnets)
    assert tiers == ["private"] * 3 + ["public"] * 3
    azs = {g.node(s).cluster for s in subnets}
    assert len(azs) == 3 and all(c.rsplit("/", 1)[1].startswith("az-") for c in azs)
    host = one(g, "aws_instance")
    for service in ("ssm", "secretsmanager"):
        assert heads(g, host, one(g, "aws_vpc_endpoint", service)) == {HTTPS}


def test_optional_extras_are_drawn(synth_profile):
    g = graph_of(synth_profile("extras").data)
    trail, dicom = one(g, "aws_cloudtrail"), one(g, "aws_s3_bucket", "dicom")
    assert heads(g, dicom, trail) == {"data events"}
    assert heads(g, trail, one(g, "aws_s3_bucket", "s3_bucket.log")) == {"trail files"}
    assert heads(g, one(g, "aws_backup_plan"), one(g, "aws_db_instance")) == {"backs up"}
    assert "Object Lock" in g.node(dicom).label


def test_the_second_region_and_the_fleet_are_drawn(synth_profile):
    """From the real scaled stack (prod with a fleet): the fleet's count and template, the replica
    in its own region's cluster, the session document's log group, the dashboard."""
    g = graph_of(synth_profile("scaled").data)
    asg = one(g, "aws_autoscaling_group")
    assert f"{SCALED['hosts']} x " in g.node(asg).label
    assert heads(g, one(g, "aws_launch_template"), asg) == {"launches"}
    replica = one(g, "aws_s3_bucket", "replica_bucket")
    assert g.node(replica).cluster == "region:us-west-2"
    assert g.node(one(g, "aws_kms_key", "replica")).cluster == "region:us-west-2"
    assert heads(g, one(g, "aws_s3_bucket", "dicom"), replica) == {"replication"}
    sessions = one(g, "aws_cloudwatch_log_group", "sessions")
    assert heads(g, one(g, "aws_ssm_document", "session-document"), sessions) == {"session logs"}
    assert g.ids_of("aws_cloudwatch_dashboard")


# -- determinism and names ---------------------------------------------------------------------------------


def test_dot_is_deterministic_and_free_of_cdktf_hashes(default_stack):
    text = dot_for(default_stack.data)
    shuffled = copy.deepcopy(default_stack.data)
    shuffled["resource"] = dict(reversed(list(shuffled["resource"].items())))
    assert dot_for(shuffled) == text
    assert not re.search(r'_[0-9A-F]{8}[".]', text)
    assert "/work/" not in text and str(default_stack.outdir) not in text


def test_hash_suffixes_are_dropped_and_collisions_refused(default_stack):
    assert stable_name("network_vpc_4E8F0223") == "network_vpc"
    assert stable_name("dicom_bucket") == "dicom_bucket"
    assert stable_name("site_key_abc") == "site_key_abc"
    data = copy.deepcopy(default_stack.data)
    vpcs = data["resource"]["aws_vpc"]
    name, body = next(iter(vpcs.items()))
    vpcs[stable_name(name) + "_0000FFFF"] = body
    with pytest.raises(TfJsonError, match="same name"):
        Stack.from_json(data)


def test_cli_writes_dot_and_reports_bad_input(default_stack, tmp_path, capsys):
    source = default_stack.stack_dir / "cdk.tf.json"
    out = tmp_path / "site.dot"
    assert diagram.main([str(source), "--dot", str(out)]) == 0
    assert out.read_text() == dot_for(default_stack.data)
    assert diagram.main([str(source)]) == diagram.EXIT_USAGE
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert diagram.main([str(broken), "--dot", str(out)]) == diagram.EXIT_USAGE
    assert "broken.json" in capsys.readouterr().err


@pytest.mark.programs
def test_dot_renders_the_diagram(default_stack, synth_profile, tmp_path):
    text = dot_for(synth_profile("scaled").data)
    svg = diagram.svg_text(text)
    assert svg_node_ids(svg) == dot_node_ids(text)
    out = tmp_path / "site.svg"
    source = default_stack.stack_dir / "cdk.tf.json"
    assert diagram.main([str(source), "--dot", str(tmp_path / "site.dot"), "--svg", str(out)]) == 0
    assert svg_node_ids(out.read_text()) == dot_node_ids((DIAGRAMS / "default.dot").read_text())


@pytest.mark.programs
def test_dot_rejects_a_broken_graph():
    # Negative control: the renderer is really checking the text.
    with pytest.raises(subprocess.CalledProcessError):
        diagram.svg_text('digraph "x" { "a" -> }')


def test_the_scaled_profile_is_drawn_from_its_own_stack(synth_profile):
    """The real scaled stack (not the hand-made one): clients reach the load balancer's addresses,
    the balancer the hosts' group, the group the database; alarms notify the encrypted topic."""
    g = graph_of(synth_profile("scaled").data)
    lb, asg = one(g, "aws_lb"), one(g, "aws_autoscaling_group")
    assert heads(g, lb, asg) == {HTTPS, DICOM}
    assert heads(g, asg, one(g, "aws_db_instance")) == {POSTGRES}
    # The balancer's two addresses and one per NAT gateway.
    assert len(g.ids_of("aws_eip")) == 2 + len(g.ids_of("aws_nat_gateway")) and not g.ids_of("aws_instance")
    topic = one(g, "aws_sns_topic", "monitoring")
    assert all(heads(g, alarm, topic) == {"notifies"} for alarm in g.ids_of("aws_cloudwatch_metric_alarm"))


# -- the scaled site's addresses and egress ------------------------------------------------------------------


def traffic_reach(g: Graph, start: str, avoid: frozenset[str] = frozenset()) -> set[str]:
    """The nodes reachable from ``start`` along traffic edges, not passing through ``avoid``."""
    seen, todo = {start}, [start]
    while todo:
        node = todo.pop()
        for e in g.edges:
            if e.src == node and e.kind == "traffic" and e.dst not in seen and e.dst not in avoid:
                seen.add(e.dst)
                todo.append(e.dst)
    return seen


def test_no_elastic_ip_of_the_scaled_site_floats(synth_profile):
    g = graph_of(synth_profile("scaled").data)
    eips = g.ids_of("aws_eip")
    assert len(eips) == 4, eips  # two for the balancer, one per NAT gateway
    for eip in eips:
        assert any(eip in (e.src, e.dst) for e in g.edges), f"{eip} is drawn unconnected"


def test_every_balancer_address_leads_to_the_balancer(synth_profile):
    synth = synth_profile("scaled")
    stack, g = Stack.from_json(synth.data), graph_of(synth.data)
    lb = one(g, "aws_lb")
    (balancer,) = stack.of_type("aws_lb").values()
    # The addresses as the JSON maps them (one per zone), not as they are named.
    mapped = [e.stable for e in stack.targets(balancer["subnet_mapping"], "aws_eip")]
    assert len(mapped) == 2
    for eip in mapped:
        assert heads(g, eip, lb) == {"Elastic IP"}
        assert heads(g, CLIENTS, eip) == {HTTPS, DICOM}
        # The client allow-lists as on the single-address picture.
        assert {e.label.split("\n")[1] for e in g.edges_between(CLIENTS, eip)} == {
            "from 10.20.0.0/16",
            "from 10.20.1.0/24",
        }
    assert not g.edges_between(CLIENTS, lb), "clients reach the balancer through its addresses"


def test_each_nat_gateway_is_drawn_in_its_subnets_zone(synth_profile):
    synth = synth_profile("scaled")
    stack, g = Stack.from_json(synth.data), graph_of(synth.data)
    nats = stack.of_type("aws_nat_gateway")
    assert len(nats) == 2
    zones = set()
    for nat, body in nats.items():
        (subnet,) = stack.targets(body["subnet_id"], "aws_subnet")
        (eip,) = stack.targets(body["allocation_id"], "aws_eip")
        zone = g.node(subnet.stable).cluster
        assert "/az-" in zone and g.node(nat.stable).cluster == zone
        assert g.node(eip.stable).cluster == zone
        assert heads(g, nat.stable, eip.stable) == {"outbound address"}
        assert g.edges_between(nat.stable, subnet.stable)
        zones.add(zone)
    assert len(zones) == 2, "one NAT gateway per zone"


def test_the_hosts_reach_the_internet_through_the_nat_gateways(synth_profile):
    g = graph_of(synth_profile("scaled").data)
    asg, nats = one(g, "aws_autoscaling_group"), frozenset(g.ids_of("aws_nat_gateway"))
    assert len(nats) == 2
    assert not g.edges_between(asg, diagram.INTERNET), "no shortcut past the NAT gateways"
    assert diagram.INTERNET in traffic_reach(g, asg)
    assert diagram.INTERNET not in traffic_reach(g, asg, avoid=nats)
    for nat in nats:
        assert heads(g, asg, nat) == {HTTPS} and heads(g, nat, diagram.INTERNET) == {HTTPS}


def test_the_egress_path_follows_the_routes_not_the_names(synth_profile):
    # Negative controls: point both host route tables at one NAT gateway, and only that one carries
    # the hosts' traffic; rename the network resources, and the picture keeps its shape.
    data = copy.deepcopy(synth_profile("scaled").data)
    routes = data["resource"]["aws_route"]
    nat_routes = [r for r in routes.values() if "nat_gateway_id" in r]
    assert len(nat_routes) == 2
    nat_routes[1]["nat_gateway_id"] = nat_routes[0]["nat_gateway_id"]
    g = graph_of(data)
    asg = one(g, "aws_autoscaling_group")
    used = [n for n in g.ids_of("aws_nat_gateway") if g.edges_between(asg, n)]
    assert len(used) == 1 and heads(g, used[0], diagram.INTERNET) == {HTTPS}
    # Without the NAT routes the hosts' subnets have no way out drawn through a gateway.
    for name in [k for k, r in routes.items() if "nat_gateway_id" in r]:
        del routes[name]
    g = graph_of(data)
    assert heads(g, asg, diagram.INTERNET) == {HTTPS}
    assert not any(e.src in g.ids_of("aws_nat_gateway") and e.kind == "traffic" for e in g.edges)
    renamed = graph_of(
        json.loads(
            json.dumps(synth_profile("scaled").data)
            .replace("network_nat", "egress_a")
            .replace("network_host-rt", "rt_b")
            .replace("nlb_eip", "addr_c")
            .replace("site_eip", "addr_d")
        )
    )
    original = graph_of(synth_profile("scaled").data)
    assert len(renamed.edges) == len(original.edges)
    assert sorted(n.cluster for n in renamed.nodes) == sorted(n.cluster for n in original.nodes)
    assert diagram.INTERNET not in traffic_reach(renamed, asg, avoid=frozenset(renamed.ids_of("aws_nat_gateway")))
