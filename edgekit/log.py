"""Logging setup. Library modules only call ``logging.getLogger(__name__)``; the CLI and the
server call :func:`setup_logging` once."""

from __future__ import annotations

import logging
import sys

__all__ = ["setup_logging"]


def setup_logging(verbosity: int = 0) -> None:
    """0: warnings, 1: info, 2: debug for edgekit; 3: debug for everything."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Third-party libraries (torch, torchao, transformers, nncf) log a lot at WARNING on import;
    # only errors reach the user unless they ask for -vvv.
    root.setLevel(logging.ERROR if verbosity < 3 else logging.DEBUG)
    for noisy in ("torch", "torchao", "transformers", "nncf", "accelerate", "absl"):
        logging.getLogger(noisy).setLevel(logging.ERROR if verbosity < 3 else logging.DEBUG)
    logging.getLogger("edgekit").setLevel(level)
