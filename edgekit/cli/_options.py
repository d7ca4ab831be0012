"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = ["LazyChoice", "client_options", "client_security", "cloud_protocol_choice", "data_field_options",
           "engine_choice"]


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


_PEM = click.Path(exists=True, dir_okay=False, path_type=Path)


def client_options(f: Callable) -> Callable:
    """How a client reaches a secured server: --token-file, --tls, --tls-ca, --tls-cert, --tls-key."""
    options = [
        click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Send the first token of this file (chmod 600) as 'authorization: Bearer <token>'."),
        click.option("--tls", is_flag=True, help="Connect over TLS, trusting the system's CAs (or --tls-ca)."),
        click.option("--tls-ca", type=_PEM, default=None, help="Trust this CA (PEM) for the server's certificate; implies --tls."),
        click.option("--tls-cert", type=_PEM, default=None, help="Client certificate (PEM) for mutual TLS; needs --tls-key."),
        click.option("--tls-key", type=_PEM, default=None, help="Client key (PEM) of --tls-cert."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def client_security(token_file: Path | None, tls: bool, tls_ca: Path | None, tls_cert: Path | None,
                    tls_key: Path | None) -> dict[str, Any]:
    """EdgeClient keyword arguments from :func:`client_options`."""
    from edgekit.runtime.security import read_token

    token = read_token(token_file) if token_file is not None else None
    return {"token": token, "tls": tls, "tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key}
