"""Inference engines behind one protocol (:mod:`.base`), one module per engine.

Each module registers its :class:`~edgekit.registry.EngineSpec` (the formats it serves, what it
needs) at import and imports its engine library only when a bundle is loaded, so a device
needs just the engine it uses. Adding an engine is adding a module here: see ARCHITECTURE.md.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.manifest import Manifest
from edgekit.registry import ENGINES, EngineSpec, Registry, engines_for, import_package_modules
from edgekit.runtime.backends.base import Backend

__all__ = ["load_backend", "load_engines", "resolve_backend"]


def load_engines() -> Registry[EngineSpec]:
    """ENGINES with every backend module of this package registered (light: engines load lazily)."""
    import_package_modules(__name__)
    return ENGINES


def resolve_backend(manifest: Manifest, backend: str = "auto") -> str:
    from edgekit.errors import ConfigError

    engines = load_engines()
    able = [e.name for e in engines_for(manifest.format)]
    if not able:
        raise ConfigError(f"no backend runs the bundle format {manifest.format!r}")
    if backend == "auto":
        return able[0]
    name = engines.canonical(backend)
    if name not in able:
        raise ConfigError(f"backend {name!r} cannot run a {manifest.format} bundle (use: {', '.join(able)})")
    return name


def load_backend(bundle_dir: Path, manifest: Manifest, backend: str = "auto", *, threads: int | None = None,
                 **options) -> Backend:
    return load_engines().get(resolve_backend(manifest, backend)).load(bundle_dir, manifest, threads=threads, **options)
