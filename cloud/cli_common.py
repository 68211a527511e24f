"""What every ``dangol-cloud`` command module shares: the consoles and the usage error (exit status 2)."""

from __future__ import annotations

import logging

from rich.console import Console

__all__ = ["UsageError", "err", "log", "out"]

log = logging.getLogger("dangol_cloud")
err = Console(stderr=True)
out = Console()


class UsageError(Exception):
    """Bad command-line input (exit status 2)."""
