"""Where a site's DICOM replica goes by default: a second region under the same law.

``replica_region`` (config/inputs.py) left empty turns replication on in prod, to the region this
table pairs with the site's region. Every pair stays inside one jurisdiction (the same country, or
the European Union), so turning replication on never moves PHI across a border nobody chose. A
region without such a partner among the regions Orthweb knows (config/rds_ca.py) is absent: there a
prod site must name its replica region (or ``none``) itself.
"""

from __future__ import annotations

# Where each known region's data is governed from: a country code, or "eu" for the European Union.
JURISDICTION = {
    "us-east-1": "us",
    "us-east-2": "us",
    "us-west-1": "us",
    "us-west-2": "us",
    "ca-central-1": "ca",
    "sa-east-1": "br",
    "eu-west-1": "eu",
    "eu-west-3": "eu",
    "eu-central-1": "eu",
    "eu-north-1": "eu",
    "eu-south-1": "eu",
    "eu-south-2": "eu",
    "eu-west-2": "gb",
    "eu-central-2": "ch",
    "af-south-1": "za",
    "me-south-1": "bh",
    "me-central-1": "ae",
    "ap-east-1": "hk",
    "ap-south-1": "in",
    "ap-south-2": "in",
    "ap-northeast-1": "jp",
    "ap-northeast-3": "jp",
    "ap-northeast-2": "kr",
    "ap-southeast-1": "sg",
    "ap-southeast-2": "au",
    "ap-southeast-4": "au",
    "ap-southeast-3": "id",
}

# The default replica region of each region that has a partner in its jurisdiction: the nearest
# large region on the other side of the country (or of the EU), so one regional disaster rarely
# takes both.
DEFAULT_REPLICA_REGION = {
    "us-east-1": "us-west-2",
    "us-east-2": "us-west-2",
    "us-west-1": "us-east-2",
    "us-west-2": "us-east-1",
    "eu-west-1": "eu-central-1",
    "eu-west-3": "eu-central-1",
    "eu-central-1": "eu-west-1",
    "eu-north-1": "eu-central-1",
    "eu-south-1": "eu-central-1",
    "eu-south-2": "eu-west-3",
    "ap-south-1": "ap-south-2",
    "ap-south-2": "ap-south-1",
    "ap-northeast-1": "ap-northeast-3",
    "ap-northeast-3": "ap-northeast-1",
    "ap-southeast-2": "ap-southeast-4",
    "ap-southeast-4": "ap-southeast-2",
}


def default_replica_region(region: str) -> str | None:
    """The replica region prod uses for ``region`` when none is set, or None if it has no partner."""
    return DEFAULT_REPLICA_REGION.get(region)
