"""A registry keyed by a string, with aliases and a did-you-mean error.

Used for export targets (``onnx``, ``openvino``, ``tflite``) and runtime backends, so the
CLI, the pipeline and the runtime all resolve a user's word the same way.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from edgekit.errors import UnsupportedFormatError

__all__ = ["Registry"]

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

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = ()) -> None:
        key = name.lower()
        if key in self._items or key in self._aliases:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[key] = obj
        for alias in aliases:
            self._aliases[alias.lower()] = key

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
