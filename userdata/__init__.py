"""The host's cloud-init user data, rendered at synth time from the files in this folder."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def render_user_data() -> str:
    """Placeholder cloud-config until the bootstrap lands (the host construct takes any text)."""
    return (HERE / "placeholder.yaml").read_text()
