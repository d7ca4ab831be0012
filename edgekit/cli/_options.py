"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable

import click

__all__ = ["LazyChoice", "cloud_protocol_choice", "data_field_options", "engine_choice"]


class LazyChoice(click.Choice):
    """A click.Choice whose choices come from a registry when first needed (parse time or --help)."""

    def __init__(self, names: Callable[[], list[str]], *, extra: tuple[str, ...] = ()) -> None:
        self._names, self._extra, self._cached = names, extra, None
        super().__init__([])

    @property
    def choices(self):  # type: ignore[override]
        if self._cached is None:
            self._cached = [*self._extra, *self._names()]
        return self._cached

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns it; the registry decides
        pass


def engine_choice() -> LazyChoice:
    """``auto`` and every registered engine (edgekit.registry.ENGINES)."""

    def names() -> list[str]:
        from edgekit.runtime.backends import load_engines

        return load_engines().names()

    return LazyChoice(names, extra=("auto",))


def cloud_protocol_choice() -> LazyChoice:
    def names() -> list[str]:
        from edgekit.runtime.cloud_protocols import load_cloud_protocols

        return load_cloud_protocols().names()

    return LazyChoice(names)


def data_field_options(f: Callable) -> Callable:
    f = click.option("--label-field", default="label", show_default=True, help="Label field (JSON key or CSV column).")(f)
    f = click.option("--text-field", default="text", show_default=True, help="Text field (JSON key or CSV column).")(f)
    return f
