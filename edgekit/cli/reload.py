"""``edgekit reload``: ask a running server to re-read its bundle and swap the new version in.

The same as sending the server SIGHUP, over its admin API (``edgekit.v1.EdgeAdmin/Reload``),
which needs the server's bearer token (``edgekit serve --auth-token-file``). Prints the model
now served; a refused bundle is a one-line error with the server's reason (the old version
keeps serving). Module-level imports: click and the standard library only.
"""

from __future__ import annotations

from typing import Any

import click

from edgekit.cli._options import client_options, client_security

__all__ = ["command"]


@click.command("reload")
@click.option("--server", "target", required=True, metavar="HOST:PORT", help="The edgekit server to reload.")
@click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True,
              help="How long loading, verifying and warming up the new bundle may take.")
@client_options
def command(target: str, timeout_s: float, **security: Any) -> None:
    """Swap the bundle a running server serves for the version now at its path, without a restart."""
    from edgekit.deps import require

    require("grpc", "grpc_health", extra="runtime", what="edgekit reload")
    from edgekit.runtime.client import EdgeClient

    with EdgeClient(target, timeout_s=timeout_s, **client_security(**security)) as client:
        info = client.reload()
    click.echo(f"serving {info.name} version {info.version} ({info.format}/{info.precision}, backend {info.backend})")
