"""Check optional dependencies before heavy work starts, with the pip command in the error.

In the core so that the converter pipeline and the CLI share it (the CLI sits above everything
and nothing imports it).
"""

from __future__ import annotations

import importlib.util

from edgekit.errors import MissingDependencyError

__all__ = ["require"]


def require(*modules: str, extra: str, what: str) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(module, extra, what=what)
