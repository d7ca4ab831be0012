"""Exporters, one module per format, each registering its :class:`~edgekit.registry.FormatSpec`.

Adding a format is adding a module here (an ``Exporter`` and its spec) plus an engine that serves
it in ``edgekit.runtime.backends``: see ARCHITECTURE.md.
"""

from __future__ import annotations

from edgekit.converters.exporters.base import Exporter
from edgekit.registry import FORMATS, FormatSpec, Registry, import_package_modules

__all__ = ["get_exporter", "load_formats"]


def load_formats() -> Registry[FormatSpec]:
    """FORMATS with every exporter module of this package registered (light: no torch import)."""
    import_package_modules(__name__)
    return FORMATS


def get_exporter(name: str) -> Exporter:
    return load_formats().get(name).make_exporter()
