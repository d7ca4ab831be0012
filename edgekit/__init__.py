"""edgekit: make a fine-tuned transformer text classifier run on the edge.

Importing this package is cheap on purpose: no torch, transformers, openvino or
tensorflow at import time (the CLI's ``--help`` depends on it).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgekit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
