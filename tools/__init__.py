"""Orthweb's tools, grouped by who uses them:

- ``harness/``: the test harness and local site (AWS API emulator, TLS-only PostgreSQL, test PKI,
  the host bootstrap off EC2, the local site, Terraform offline, the deploy rehearsal);
- ``ops/``: operator commands run against a deployed (or local) site (the validator);
- ``maint/``: maintenance generators (README tables, the RDS CA bundle, synth snapshots);
- ``ci/``: the CI gates (checkov with the custom policies).

``tools/proc.py`` is the one process helper (free ports, waiting for a listener, stopping).
"""
