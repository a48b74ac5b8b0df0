"""The bottom layer: the deployment's inputs, the site's facts and the RDS CA bundle.

Everything else (stacks, modules, userdata, tools, tests) may import from here; this package
imports nothing of Orthweb's and nothing outside the standard library.
"""

from pathlib import Path

# The project root: the folder holding main.py, orthweb.toml and the asset folders.
ROOT = Path(__file__).resolve().parent.parent
