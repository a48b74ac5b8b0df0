#!/usr/bin/env python
"""Orthweb CDKTF app: ``build_app()`` builds the app; ``main()`` validates config and synthesizes.

Importing this module has no side effects. ``cdktf synth`` (through cdktf.json) and
``python main.py`` both run ``main()``; only ``main()`` reads the environment.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from config import ROOT
from config.inputs import ConfigError, OrthwebConfig, load_config

if TYPE_CHECKING:
    from cdktf import App

DEFAULT_OUTDIR = "cdktf.out"
EXIT_CONFIG_ERROR = 2


def build_app(config: OrthwebConfig, outdir: str | None = None, state_path: str | None = None) -> App:
    """An App holding the Orthweb stack for ``config``.

    ``state_path`` puts Terraform's local state there (the rehearsal keeps it in its own folder);
    otherwise stacks/state.py decides (local file, or the S3 bucket of ``state_bucket``).
    """
    # jsii prints a Node end-of-life banner on every run otherwise.
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    # Imported here, not at the top: they start the jsii runtime (a Node process), so importing
    # main.py stays free of side effects.
    from cdktf import App

    from stacks.orthweb_stack import OrthwebStack
    from stacks.state import configure_backend

    app = App(outdir=outdir) if outdir else App()
    stack = OrthwebStack(app, config.name, config=config)
    configure_backend(stack, config, Path(app.outdir) / "stacks" / config.name, state_path)
    return app


def synth(config: OrthwebConfig, outdir: Path) -> Path:
    """Synthesize into a temporary sibling folder, then swap it in: never a half-written outdir."""
    outdir = outdir.resolve()
    outdir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", dir=outdir.parent))
    try:
        build_app(config, str(staging)).synth()
        if outdir.exists():
            old = outdir.with_name(f".{outdir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            outdir.rename(old)
            staging.rename(outdir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(outdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return outdir


def main(environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        config = load_config(ROOT, environ)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"orthweb: config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    # The cdktf CLI tells the app where to write through CDKTF_OUTDIR.
    outdir = synth(config, Path(environ.get("CDKTF_OUTDIR", ROOT / DEFAULT_OUTDIR)))
    print(f"orthweb: synthesized stack '{config.name}' into {outdir}/stacks/{config.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
