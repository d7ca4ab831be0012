"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable

import click

__all__ = ["data_field_options"]


def data_field_options(f: Callable) -> Callable:
    f = click.option("--label-field", default="label", show_default=True, help="Label field (JSON key or CSV column).")(f)
    f = click.option("--text-field", default="text", show_default=True, help="Text field (JSON key or CSV column).")(f)
    return f
