"""Logging set-up shared by the services: one line per record, journald friendly."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    """Plain single-line records on stderr; journald adds the timestamp under systemd."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
