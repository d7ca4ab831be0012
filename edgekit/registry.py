"""Registries keyed by a string, with aliases and a did-you-mean error, and the specs they hold.

Three registries, each filled by the modules that implement their entries (one module, one
spec, next to its code):

- :data:`FORMATS`: export formats (:class:`FormatSpec`), registered by the modules of
  ``edgekit.converters.exporters``;
- :data:`ENGINES`: inference engines (:class:`EngineSpec`), registered by the modules of
  ``edgekit.runtime.backends`` (and the torch engine of the convert extra);
- :data:`CLOUD_PROTOCOLS`: how the edge calls its cloud model (:class:`CloudProtocolSpec`),
  registered in ``edgekit.runtime.cloud``.

The specs are plain data and the implementations are named by import path ("module:attr"),
so listing what exists (the CLI's choices, ``--help``) imports no engine or exporter library.
:func:`edgekit.converters.exporters.load_formats`, :func:`edgekit.runtime.backends.load_engines` and
:func:`edgekit.runtime.cloud_protocols.load_cloud_protocols` import the (light) spec-bearing modules.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from edgekit.errors import UnsupportedFormatError

__all__ = [
    "CLOUD_PROTOCOLS",
    "CloudProtocolSpec",
    "ENGINES",
    "EngineSpec",
    "FORMATS",
    "FormatSpec",
    "Registry",
    "engines_for",
    "import_package_modules",
    "resolve_attr",
]

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj, aliases=aliases)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = ()) -> T:
        key = name.lower()
        if key in self._items or key in self._aliases:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[key] = obj
        for alias in aliases:
            self._aliases[alias.lower()] = key
        return obj

    def add_spec(self, spec: T) -> T:
        """Register a spec under its own ``name`` and ``aliases``; a module re-imported is not an error."""
        name = spec.name.lower()  # type: ignore[attr-defined]
        if self._items.get(name) == spec:
            return spec
        return self.add(name, spec, aliases=spec.aliases)  # type: ignore[attr-defined]

    def remove(self, name: str) -> None:
        """Unregister ``name`` and its aliases (tests that register a fake entry clean up with it)."""
        key = self.canonical(name)
        del self._items[key]
        self._aliases = {a: k for a, k in self._aliases.items() if k != key}

    def canonical(self, name: str) -> str:
        key = name.strip().lower()
        if key in self._items:
            return key
        if key in self._aliases:
            return self._aliases[key]
        choices = sorted(self._items) + sorted(self._aliases)
        close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
        hint = f"did you mean {self._aliases.get(close[0], close[0])!r}?" if close else None
        raise UnsupportedFormatError(
            f"unknown {self.kind} {name!r} (known: {', '.join(sorted(self._items))})", hint=hint
        )

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name.lower() in self._items or name.lower() in self._aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def resolve_attr(path: str) -> Any:
    """"package.module:attribute" → the attribute (imported now)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class FormatSpec:
    """An export format: what makes it, what it needs, which variants it has."""

    name: str
    exporter: str  # "module:Class" of the Exporter (edgekit.converters.exporters.base)
    variants: tuple[str, ...]  # every variant, fp32 first
    demo_variants: tuple[str, ...]  # what `edgekit demo` tries (a few, to stay within minutes)
    requires: tuple[str, ...]  # import names the export needs
    extra: str = "convert"  # the pip extra that brings them
    aliases: tuple[str, ...] = ()
    default_target: bool = True  # converted when --targets is not given

    def make_exporter(self):
        return resolve_attr(self.exporter)()


@dataclass(frozen=True)
class EngineSpec:
    """An inference engine: which formats it serves and how it loads a bundle."""

    name: str
    loader: str  # "module:function" (bundle_dir, manifest, *, threads, **options) -> Backend
    formats: tuple[str, ...]  # bundle formats it serves
    requires: tuple[str, ...]  # import names, any one of which is enough
    distributions: tuple[str, ...]  # PyPI names whose versions go into device records
    extra: str = "runtime"
    aliases: tuple[str, ...] = ()
    priority: int = 0  # among the engines of a format, the lowest is the default ("auto")

    def load(self, bundle_dir, manifest, *, threads: int | None = None, **options):
        """The engine's Backend for the bundle; ``options``: engine-specific (the torch engine's ``device``)."""
        return resolve_attr(self.loader)(bundle_dir, manifest, threads=threads, **options)


@dataclass(frozen=True)
class CloudProtocolSpec:
    """How the edge reaches its cloud model: a client class, constructed as ``Class(target[, model_name])``."""

    name: str
    client: str  # "module:Class" of a runtime.cloud.CloudClient
    description: str  # one line for --help
    needs_model_name: bool = False  # the server hosts several models: --cloud-model NAME picks one
    aliases: tuple[str, ...] = ()

    def make_client(self, target: str, model_name: str | None, **security):
        """The client; ``security``: ``credentials`` (grpc channel credentials) and ``token`` (bearer)."""
        cls = resolve_attr(self.client)
        return cls(target, model_name, **security) if self.needs_model_name else cls(target, **security)


FORMATS: Registry[FormatSpec] = Registry("export format")
ENGINES: Registry[EngineSpec] = Registry("engine")
CLOUD_PROTOCOLS: Registry[CloudProtocolSpec] = Registry("cloud protocol")


def import_package_modules(package: str) -> None:
    """Import every public module of ``package``: each registers the spec it carries (plugin discovery;
    the layer that owns the package calls it, never the core)."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def engines_for(fmt: str) -> list[EngineSpec]:
    """The registered engines that serve ``fmt``, the default first."""
    return sorted((ENGINES.get(n) for n in ENGINES if fmt in ENGINES.get(n).formats), key=lambda e: e.priority)
