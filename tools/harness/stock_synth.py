"""``python -m tools.harness.stock_synth``: main.py's synth with the stock AWS binding import, the
path the lazy binding is measured and checked against (bench/synth.py, tests/test_aws_binding.py).

The binding package is imported whole first, before ``modules`` can install the lazy binding, which
then keeps it (modules/aws_binding.py). Nothing else differs from ``python main.py``.
"""

from __future__ import annotations

import sys

import cdktf_cdktf_provider_aws  # noqa: F401  # the stock import, first

from main import main

if __name__ == "__main__":
    sys.exit(main())
