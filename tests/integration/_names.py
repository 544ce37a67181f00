"""Names for the broker objects a test declares."""

from __future__ import annotations

import secrets


def unique(prefix: str = "q") -> str:
    """A queue or exchange name no other test (or run) uses."""
    return f"trio-lavin-test.{prefix}.{secrets.token_hex(6)}"
