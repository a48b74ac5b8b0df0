"""Reusable Orthweb constructs, one per concern. Each keeps what it creates as public attributes.

Importing this package installs the lazy AWS binding (``modules/aws_binding.py``) before any
construct imports a resource class: the one place that rule is kept. A process that imported the
stock binding first (``python -m tools.harness.stock_synth``, for comparison) keeps it.
"""

from modules.aws_binding import use_lazy_binding

use_lazy_binding()
