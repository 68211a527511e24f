"""What every ``dangol-cloud`` command module shares: the consoles and the usage error (exit status 2)."""

from __future__ import annotations

import logging

from rich.console import Console

__all__ = ["UsageError", "err", "log", "out"]

log = logging.getLogger("dangol_cloud")
# soft_wrap: a long line (a path, a URL) is never broken where rich guesses the width (80 columns when not a
# terminal: a journal, a log file, a pipe): the terminal wraps it, and grep finds it whole
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


class UsageError(Exception):
    """Bad command-line input (exit status 2)."""
