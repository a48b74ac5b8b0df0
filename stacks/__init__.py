"""Stacks wire the constructs of modules/ together and own the outputs.

``modules`` is imported first: importing it installs the lazy AWS binding before the stack imports
the provider classes.
"""

import modules  # noqa: F401
