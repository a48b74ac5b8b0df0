"""Where the containers may connect: the host's firewall for what Orthanc and nginx send out.

The security group lets the host itself out on HTTPS to anywhere: Docker Hub, the compose release on
GitHub and the Amazon Linux repositories publish no address ranges. The containers are what outside
requests reach, so a stolen password or an Orthanc flaw would send data out through them: they get a
narrower way out, enforced by the host's kernel in Docker's ``DOCKER-USER`` chain (the place Docker
leaves to its users and never rewrites; docs.docker.com "Docker with iptables"). From the site's
bridge (``orthweb0``, named in docker-compose.yml) only these leave:

- replies to connections made to the containers (the site's HTTPS and DICOM TLS clients);
- name lookups: DNS (UDP and TCP 53) to the VPC's resolver (the VPC range's base + 2, and
  169.254.169.253), which Docker's embedded DNS asks from inside the container's network;
- the database: TCP ``DB_PORT`` inside the VPC (``VPC_CIDR``);
- the DICOM bucket: HTTPS to S3's address ranges in the region: the entries of AWS's managed prefix
  list ``S3_PREFIX_LIST`` (com.amazonaws.<region>.s3), read from EC2 at every start and refresh, so
  a range AWS adds is open within one refresh (Terraform names the list, never its ranges: they
  would freeze in the user data and a change would replace the host);
- each modality that receives C-MOVE, at its address and port.

The ports of S3 and of each modality come from ``egress.json`` in the boot bundle (config/facts.py
writes each port once).

Everything else is refused (TCP reset, so a refused call fails at once) and logged by the kernel
(``orthweb-egress-refused:``, at most 6 a minute). The rules live in the chain ``ORTHWEB-EGRESS``,
replaced in one ``iptables-restore`` transaction on every start of orthweb.service, which fails to
start when they cannot be applied: no container runs without them; the refresh applies them again
when S3's ranges have changed.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHAIN = "ORTHWEB-EGRESS"
DOCKER_CHAIN = "DOCKER-USER"
BRIDGE = "orthweb0"
DNS_PORT = 53
# The Amazon-provided DNS server's fixed address (besides the VPC range's base + 2).
AMAZON_DNS = "169.254.169.253"
LOG_PREFIX = "orthweb-egress-refused: "


class EgressError(Exception):
    """The rules cannot be made or applied; the message names the value or the command."""


@dataclass(frozen=True)
class Egress:
    """What the containers may reach (module docstring)."""

    vpc_cidr: str
    db_port: int
    s3_cidrs: tuple[str, ...]
    s3_port: int
    modalities: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        _network("VPC_CIDR", self.vpc_cidr)
        if not self.s3_cidrs:
            raise EgressError("no S3 ranges (S3_PREFIX_LIST empty or unknown): Orthanc could not reach its bucket")
        for cidr in self.s3_cidrs:
            _network("S3_PREFIX_LIST entries", cidr)
        for address, port in self.modalities:
            _network("egress.json modalities", address)
            _port("egress.json modalities", port)
        _port("DB_PORT", self.db_port)
        _port("egress.json s3_port", self.s3_port)

    @property
    def resolvers(self) -> tuple[str, str]:
        """The VPC's DNS resolver: the range's base + 2, and the fixed Amazon DNS address."""
        return str(ipaddress.ip_network(self.vpc_cidr)[2]), AMAZON_DNS

    @classmethod
    def from_site(cls, site: Any, bundle_file: Path, s3_ranges: Callable[[str], list[str]]) -> Egress:
        """From site.env's values (``site[...]``), the boot bundle's egress.json, and S3's ranges
        (``s3_ranges``: the entries of the prefix list site.env names)."""
        try:
            listed = json.loads(bundle_file.read_text()) if bundle_file.is_file() else {}
        except ValueError as exc:
            raise EgressError(f"{bundle_file}: not JSON ({exc})") from exc
        port = site["DB_PORT"]
        if not port.isdigit():
            raise EgressError(f"DB_PORT: {port!r} is not allowed; allowed: a port number (1-65535)")
        return cls(
            vpc_cidr=site["VPC_CIDR"],
            db_port=int(port),
            s3_cidrs=tuple(s3_ranges(site["S3_PREFIX_LIST"])) if site["S3_PREFIX_LIST"] else (),
            s3_port=int(listed.get("s3_port", 0)),
            modalities=tuple((str(a), int(p)) for a, p in listed.get("modalities", [])),
        )

    def rules(self) -> str:
        """The chain as ``iptables-restore --noflush`` input: the chain is emptied and refilled at once."""
        lines = [
            "*filter",
            f":{CHAIN} - [0:0]",
            f"-A {CHAIN} -o {BRIDGE} -m comment --comment site-containers -j RETURN",
            f"-A {CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -m comment --comment replies -j RETURN",
            *(
                f"-A {CHAIN} -d {resolver}/32 -p {protocol} -m {protocol} --dport {DNS_PORT}"
                " -m comment --comment dns -j RETURN"
                for resolver in self.resolvers
                for protocol in ("udp", "tcp")
            ),
            f"-A {CHAIN} -d {self.vpc_cidr} -p tcp -m tcp --dport {self.db_port}"
            " -m comment --comment database -j RETURN",
        ]
        lines += [
            f"-A {CHAIN} -d {cidr} -p tcp -m tcp --dport {self.s3_port} -m comment --comment dicom-bucket -j RETURN"
            for cidr in self.s3_cidrs
        ]
        lines += [
            f"-A {CHAIN} -d {address}/32 -p tcp -m tcp --dport {port} -m comment --comment c-move -j RETURN"
            for address, port in self.modalities
        ]
        lines += [
            f'-A {CHAIN} -m limit --limit 6/min -j LOG --log-prefix "{LOG_PREFIX}"',
            f"-A {CHAIN} -p tcp -j REJECT --reject-with tcp-reset",
            f"-A {CHAIN} -j REJECT --reject-with icmp-admin-prohibited",
            "COMMIT",
        ]
        return "\n".join(lines) + "\n"


def apply(egress: Egress, run: Callable[..., Any] = subprocess.run) -> None:
    """Replace the chain's rules in one transaction, then make sure the site's bridge jumps to it
    from Docker's chain (once: a second start finds the jump and adds none)."""
    for tool in ("iptables", "iptables-restore"):
        if shutil.which(tool) is None:
            raise EgressError(
                f"{tool} is missing (Docker needs it too): the containers' egress rules cannot be applied"
            )
    listed = run(["iptables", "-w", "-n", "-L", DOCKER_CHAIN], capture_output=True, text=True)
    if listed.returncode != 0:
        raise EgressError(f"Docker's {DOCKER_CHAIN} chain is missing (is docker.service running?)")
    restored = run(["iptables-restore", "-w", "--noflush"], input=egress.rules(), capture_output=True, text=True)
    if restored.returncode != 0:
        raise EgressError(f"iptables-restore refused the egress rules: {restored.stderr.strip()}")
    jump = ["-i", BRIDGE, "-j", CHAIN]
    if run(["iptables", "-w", "-C", DOCKER_CHAIN, *jump], capture_output=True, text=True).returncode != 0:
        added = run(["iptables", "-w", "-I", DOCKER_CHAIN, "1", *jump], capture_output=True, text=True)
        if added.returncode != 0:
            raise EgressError(f"cannot add the jump to {CHAIN}: {added.stderr.strip()}")


def bundle_document(s3_port: int, modalities: Sequence[tuple[str, int]]) -> str:
    """egress.json of the boot bundle: S3's port and the C-MOVE destinations (as the security group
    opens them)."""
    document = {"s3_port": s3_port, "modalities": [[address, port] for address, port in modalities]}
    return json.dumps(document, indent=1) + "\n"


def _network(field: str, text: str) -> None:
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise EgressError(f"{field}: {text!r} is not allowed; allowed: an IPv4 network such as 10.0.0.0/16") from None
    if network.version != 4:
        raise EgressError(f"{field}: {text!r} is not allowed; allowed: an IPv4 network such as 10.0.0.0/16")


def _port(field: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise EgressError(f"{field}: port {port} is not allowed; allowed: 1-65535")
