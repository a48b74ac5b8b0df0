"""Load only the parts of the prebuilt AWS binding that the stack uses.

``cdktf_cdktf_provider_aws/__init__.py`` imports all ~2,200 resource modules (12-15 s and ~1 GB
here), though a synth needs a few dozen. Its submodules only need the jsii assembly (``_jsii``),
so we register the package without running its ``__init__``: each ``from
cdktf_cdktf_provider_aws.vpc import Vpc`` then imports that submodule alone. Same classes, same
assembly, byte-identical output (a test compares it with the stock path). If the installed
binding's layout is not the one this was written for, nothing is changed and the stock import
runs.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

PACKAGE = "cdktf_cdktf_provider_aws"
# The layout this loader knows: version 20.1.0's assembly beside the package's _jsii module.
EXPECTED_ASSEMBLY = "provider-aws@20.1.0.jsii.tgz"


def _package_dir() -> Path | None:
    spec = importlib.util.find_spec(PACKAGE) if PACKAGE not in sys.modules else None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def use_lazy_binding() -> bool:
    """Register the binding as a lazy package; True if the fast path is in use."""
    existing = sys.modules.get(PACKAGE)
    if existing is not None:
        return bool(getattr(existing, "__orthweb_lazy__", False))
    folder = _package_dir()
    if folder is None or not (folder / "_jsii" / EXPECTED_ASSEMBLY).exists() or not (folder / "vpc").is_dir():
        return False  # unknown layout: leave the stock import alone
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(folder)]
    package.__file__ = str(folder / "__init__.py")
    package.__package__ = PACKAGE
    package.__orthweb_lazy__ = True  # type: ignore[attr-defined]
    sys.modules[PACKAGE] = package
    return True
