"""The host's own program (``orthweb-bootstrap``), shipped in the boot bundle as the package
``orthweb_host`` under /usr/local/lib/orthweb and run by the host's python3 (Python 3.9 on Amazon
Linux 2023: nothing newer is used; ``make typecheck`` checks it as 3.9).

- ``bootstrap``: the steps (boot, secrets, refresh), one lock, exceptions instead of exit codes;
- ``aws``: Secrets Manager and STS over HTTPS with SigV4, standard library only;
- ``pki``: the one PKI of Orthweb (site CA, server and client certificates, CRLs), shared with
  ``make modality-cert`` and the test harness.

Its modules import each other relatively, so the same files run as ``userdata.host`` here and as
``orthweb_host`` on the host.
"""
