"""The containers' way out (userdata/host/egress.py), enforced by a real kernel with the real iptables.

Three network namespaces stand for a host, a container on the site's bridge ``orthweb0``, and the
world beyond the host (the VPC's DNS resolver, the database inside the VPC, S3's range, a C-MOVE
modality, an address on the Internet, each listening). The host's program as the boot bundle
installs it runs ``orthweb-bootstrap egress`` in the host namespace, from a site.env and an
egress.json made by the same code that makes the host's; it reads S3's ranges from the prefix list
site.env names, in the AWS API emulator (its S3 list: 52.216.0.0/15, 3.5.0.0/19, 54.231.0.0/16). STAND-IN: Docker cannot run here, so the chain Docker makes for its users (``DOCKER-USER``,
first in FORWARD, ending in RETURN) is made by this test as dockerd does; the bridge and the
container's link are made by hand as Docker's bridge driver would.

Without the rules (the code before this change) every connection below succeeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from config.facts import HTTPS_PORT, POSTGRES_PORT
from config.inputs import DicomModality
from tools.harness.emulator import Emulator
from tools.harness.hostsim import host_program
from userdata import AppValues, HostValues, bundle_files, site_env
from userdata.host.egress import BRIDGE, CHAIN, DOCKER_CHAIN

VPC = "172.17.0.0/16"
RESOLVER = ("172.17.0.2", 53)  # the VPC range's base + 2
DATABASE = ("172.17.5.10", POSTGRES_PORT)
S3 = ("52.216.0.10", HTTPS_PORT)  # inside the S3 range given below
MODALITY = ("10.20.1.5", 104)
INTERNET = ("203.0.113.7", HTTPS_PORT)
CONTAINER = "10.99.0.2"
HOST_VALUES = HostValues(
    region="eu-west-1",
    bucket="b",
    admin_secret_arn="arn:a",
    tls_secret_arn="arn:t",
    ca_secret_arn="arn:c",
    clients_secret_arn="arn:k",
    db_secret_arn="arn:d",
    db_host="db.example",
    db_port=str(DATABASE[1]),
    db_name="orthanc",
    site_dns="site.example",
    site_ip="198.51.100.1",
    log_group="/orthweb/containers",
    orthanc_role_arn="arn:o",
    config_bucket="c",
    vpc_cidr=VPC,
)

LISTENER = textwrap.dedent(
    """
    import socket, sys, threading
    def serve(s):
        while True:
            c, _ = s.accept(); c.close()
    def echo(s):
        while True:
            data, peer = s.recvfrom(512); s.sendto(data, peer)
    for spec in sys.argv[1:]:
        host, port = spec.rsplit(":", 1)
        if host.startswith("udp/"):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((host[4:], int(port)))
            threading.Thread(target=echo, args=(s,), daemon=True).start()
            continue
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port))); s.listen(16)
        threading.Thread(target=serve, args=(s,), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
    """
)
CONNECT = textwrap.dedent(
    """
    import json, socket, sys
    found = {}
    for spec in sys.argv[1:]:
        host, port = spec.rsplit(":", 1)
        if host.startswith("udp/"):  # a datagram out, its echo back: a lookup's round trip
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
            try:
                s.sendto(b"query", (host[4:], int(port))); s.recvfrom(512); found[spec] = "answered"
            except OSError as exc:
                found[spec] = "unanswered"
            continue
        try:
            socket.create_connection((host, int(port)), timeout=3).close(); found[spec] = "connected"
        except ConnectionRefusedError:
            found[spec] = "refused"
        except OSError as exc:
            found[spec] = type(exc).__name__
    print(json.dumps(found))
    """
)


def _sh(script: str) -> None:
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], check=True, capture_output=True, text=True)


class Namespaces:
    def __init__(self, prefix: str, folder: Path) -> None:
        self.host, self.container, self.world = f"{prefix}h", f"{prefix}c", f"{prefix}w"
        # iptables and iptables-restore, the real ones, run in the host namespace.
        self.tools = folder / "bin"
        self.tools.mkdir(parents=True, exist_ok=True)
        for tool in ("iptables", "iptables-restore"):
            wrapper = self.tools / tool
            wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {self.host} /usr/sbin/{tool} "$@"\n')
            wrapper.chmod(0o755)

    def up(self) -> None:
        h, c, w = self.host, self.container, self.world
        world_addresses = " ".join(a for a, _ in (RESOLVER, DATABASE, S3, MODALITY, INTERNET))
        _sh(
            f"""
            for ns in {h} {c} {w}; do ip netns add $ns; ip -n $ns link set lo up; done
            ip -n {h} link add {BRIDGE} type bridge
            ip -n {h} addr add 10.99.0.1/24 dev {BRIDGE}
            ip -n {h} link set {BRIDGE} up
            ip link add eth0 netns {c} type veth peer name vethc netns {h}
            ip -n {h} link set vethc master {BRIDGE} up
            ip -n {c} addr add {CONTAINER}/24 dev eth0
            ip -n {c} link set eth0 up
            ip -n {c} route add default via 10.99.0.1
            ip link add eth1 netns {h} type veth peer name eth0 netns {w}
            ip -n {h} addr add 10.98.0.1/30 dev eth1
            ip -n {h} link set eth1 up
            ip -n {w} addr add 10.98.0.2/30 dev eth0
            ip -n {w} link set eth0 up
            for a in {world_addresses}; do ip -n {w} addr add $a/32 dev lo; done
            ip -n {w} route add 10.99.0.0/24 via 10.98.0.1
            ip -n {h} route add default via 10.98.0.2
            ip netns exec {h} sysctl -qw net.ipv4.ip_forward=1
            # STAND-IN for dockerd: its chain for users' rules, first in FORWARD, ending in RETURN.
            ip netns exec {h} iptables -w -N {DOCKER_CHAIN}
            ip netns exec {h} iptables -w -A {DOCKER_CHAIN} -j RETURN
            ip netns exec {h} iptables -w -A FORWARD -j {DOCKER_CHAIN}
            """
        )

    def down(self) -> None:
        for ns in (self.host, self.container, self.world):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def python(self, ns: str, code: str, *args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args], text=True, **kw)

    def connect(self, ns: str, *targets: tuple[str, int]) -> dict[str, str]:
        proc = self.python(ns, CONNECT, *(f"{a}:{p}" for a, p in targets), stdout=subprocess.PIPE)
        out, _ = proc.communicate(timeout=60)
        return json.loads(out)

    def iptables(self, *args: str) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.host, "iptables", "-w", *args], check=True, capture_output=True, text=True
        ).stdout


def _etc(folder: Path, modalities: tuple[DicomModality, ...], prefix_list: str) -> Path:
    """site.env and egress.json as the user data and the boot bundle put them on a host."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "site.env").write_text(site_env(replace(HOST_VALUES, s3_prefix_list=prefix_list)))
    (folder / "egress.json").write_text(bundle_files(AppValues(modalities=modalities))["etc/orthweb/egress.json"][1])
    return folder


def _egress(ns: Namespaces, etc: Path, emulator: Emulator) -> subprocess.CompletedProcess:
    """``orthweb-bootstrap egress`` as orthweb.service runs it: in this machine's network (it reaches
    the emulator on loopback), its iptables calls made in the test's host namespace (``ns.tools``)."""
    env = {
        "PATH": f"{ns.tools}:/usr/sbin:/usr/bin:/sbin:/bin",
        "ORTHWEB_ETC": str(etc),
        "ORTHWEB_RUN": str(etc.parent / "run"),
        "ORTHWEB_AWS_ENDPOINT": emulator.endpoint,
        **{k: v for k, v in emulator.client_env().items() if k != "AWS_ENDPOINT_URL"},
    }
    return subprocess.run([str(host_program()), "egress"], env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with Emulator(tmp_path_factory.mktemp("emulator"), region=HOST_VALUES.region) as emu:
        yield emu


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    ns = Namespaces(f"ow{os.getpid() % 100000}", tmp_path_factory.mktemp("namespaces"))
    ns.down()
    started: list[subprocess.Popen] = []
    try:
        ns.up()
        targets = [DATABASE, S3, MODALITY, INTERNET, (S3[0], 80), (DATABASE[0], HTTPS_PORT), (MODALITY[0], 105)]
        targets += [RESOLVER, (f"udp/{RESOLVER[0]}", RESOLVER[1]), (f"udp/{INTERNET[0]}", RESOLVER[1])]
        for where, listening in ((ns.world, [f"{a}:{p}" for a, p in targets]), (ns.container, [f"{CONTAINER}:8080"])):
            started.append(ns.python(where, LISTENER, *listening, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        for proc in started:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield ns
    finally:
        for proc in started:
            proc.kill()
            proc.wait()
        ns.down()


def test_containers_reach_the_database_the_bucket_and_move_destinations_and_nothing_else(world, emulator, tmp_path):
    lookups = [RESOLVER, (f"udp/{RESOLVER[0]}", RESOLVER[1]), (f"udp/{INTERNET[0]}", RESOLVER[1])]
    before = world.connect(world.container, DATABASE, S3, MODALITY, INTERNET, *lookups)
    assert set(before.values()) == {"connected", "answered"}, before  # the network works: without rules all leave
    moving = (DicomModality("PACS", MODALITY[0], MODALITY[1], rights=("echo", "move")),)
    found = _egress(world, _etc(tmp_path / "etc", moving, emulator.s3_prefix_list()[0]), emulator)
    assert found.returncode == 0, found.stderr + found.stdout
    assert "container egress: DNS, database, 3 S3 range(s), 1 C-MOVE destination(s)" in found.stdout + found.stderr
    after = world.connect(
        world.container, DATABASE, S3, MODALITY, INTERNET, (S3[0], 80), (DATABASE[0], HTTPS_PORT), (MODALITY[0], 105)
    )
    # Name lookups: the VPC's resolver answers (UDP and TCP); another server is not reached.
    assert world.connect(world.container, *lookups) == {
        f"{RESOLVER[0]}:53": "connected",
        f"udp/{RESOLVER[0]}:53": "answered",
        f"udp/{INTERNET[0]}:53": "unanswered",
    }
    assert after == {
        f"{DATABASE[0]}:{DATABASE[1]}": "connected",
        f"{S3[0]}:{S3[1]}": "connected",
        "10.20.1.5:104": "connected",
        f"{INTERNET[0]}:{INTERNET[1]}": "refused",  # the archive pushed out over HTTPS: refused
        f"{S3[0]}:80": "refused",
        f"{DATABASE[0]}:{HTTPS_PORT}": "refused",
        "10.20.1.5:105": "refused",
    }
    # Clients still reach the container and get their answers (replies leave the bridge).
    assert world.connect(world.world, (CONTAINER, 8080)) == {f"{CONTAINER}:8080": "connected"}


def test_a_second_start_replaces_the_rules_and_adds_no_second_jump(world, emulator, tmp_path):
    with_pacs = (DicomModality("PACS", MODALITY[0], MODALITY[1], rights=("echo", "move")),)
    listed = emulator.s3_prefix_list()[0]
    assert _egress(world, _etc(tmp_path / "one", with_pacs, listed), emulator).returncode == 0
    # The modality loses "move": the next start closes its way out; the rules are replaced, not appended.
    without = (DicomModality("PACS", MODALITY[0], MODALITY[1], rights=("echo", "find")),)
    assert _egress(world, _etc(tmp_path / "two", without, listed), emulator).returncode == 0
    assert world.connect(world.container, MODALITY) == {"10.20.1.5:104": "refused"}
    assert world.iptables("-S", DOCKER_CHAIN).count(f"-j {CHAIN}") == 1
    assert "c-move" not in world.iptables("-S", CHAIN)


def test_a_site_without_s3_ranges_starts_no_container(world, emulator, tmp_path):
    found = _egress(world, _etc(tmp_path / "etc", (), "pl-00000000000000000"), emulator)
    assert found.returncode == 1
    # (AWS answers an unknown list with an error, the emulator with no entries: either way, no start.)
    assert "S3_PREFIX_LIST" in found.stdout + found.stderr or "cannot read S3's address ranges" in found.stdout
